"""Sentence continuation (docs/paper.md#sentence-continuation): sample the next sentence at a lowered temperature.

X is 1-3 sentences; the policy writes Z, one sentence. The stop action is the "." token itself, so Z ends at
its first period and the sampled text never contains it. The target is p(Z "." | X)^(1/T) under the base LM
(adapters off), for every prefix: stopping after z_1..z_j gives log R = log p(z_1..z_j "." | X), so
`every_prefix_log_reward` with the "." token as the suffix is exactly the paper's reward. T anneals
1.0 -> 0.8 over 750 steps (the paper's config), or over the whole run when it is shorter (the cpu profile: 40 steps).

Choices, and why:
- Prompt = the sentences joined by single spaces, with NO trailing space. The paper's prompts end in " " (a
  GPT-2 quirk); with BPE tokenizers such as SmolLM2's the space belongs to the next word's token, so a lone
  trailing space puts the model off-distribution. Z's first token carries its leading space instead.
- Allowed tokens (the paper's illegal-token list, §2.2, as an allowlist over the decoded vocabulary): ASCII
  letters, digits, single spaces and `,;:-'()%$&/` only, so no eos/special tokens, newlines, tabs, double quotes,
  '!', '?', or other tokens containing '.' (the only way to write a period is to stop). Also blocked: single
  capital letters except "A" and "I" (so the stop cannot end an initial like "J."; the paper blocks all 26,
  the words "A" and "I" included; lowercase single letters stay, SmolLM2 starts words with them: " b"+"anging"),
  abbreviations (Mr, Dr, St, US, ...), URL pieces, lone or unmatched apostrophes (contractions such as "'s" and
  "n't" stay), repeated punctuation ("--", "//") and runs of spaces. A few words are unwritable as a result
  (SmolLM2 spells " Wolves" as " W"+"olves"), as in the paper: 2 of the 230 sentences of the built-in prompts.
- The reward is the base LM's plain log-probability (no renormalisation over the allowed tokens, unlike the
  paper's -50 logit penalty, which also applied in the reward model), like the harness's logp_ref (which
  scores Z alone, without the final ".").
- Data: the built-in sample (gfnbench/tasks/data/continuation_prompts.txt) or `--data PATH`: a text file, one prompt per
  line, or JSONL (.jsonl/.json) with {"prompt": ...} per line. Duplicate prompts are dropped, then a seeded
  shuffle is cut into train/val/test (70/10/20), so the splits are disjoint by construction.
"""
from __future__ import annotations

import json
import random
import re
import string
from pathlib import Path

from torch import Tensor

from gfnbench.sampling import context_suffix_log_reward
from gfnbench.tasks.base import Example, Task, TrainingDefaults, register_task, token_mask

BUILTIN = Path(__file__).parent / "data" / "continuation_prompts.txt"
SPLIT_FRACTIONS = {"val": 0.1, "test": 0.2}       # train gets the rest
ALLOWED_CHARS = set(string.ascii_letters + string.digits + " ,;:-'()%$&/")
WORD_CAPITALS = {"A", "I"}
ABBREVIATIONS = {"Mr", "Mrs", "Ms", "Dr", "Prof", "Jr", "Sr", "St", "Av", "Ave", "Mt", "US", "vs", "etc", "Inc",
                 "Ltd"}


def period_id(tokenizer) -> int:
    """The token that closes "A sentence." (how the paper picks its stop token); it must be "." alone."""
    ids = tokenizer("A sentence.", add_special_tokens=False)["input_ids"]
    if not ids or tokenizer.decode(ids[-1:]) != ".":
        raise ValueError(f"this tokenizer does not encode the period after a word as a single '.' token "
                         f"({[tokenizer.decode([i]) for i in ids]}), so '.' cannot be the stop action")
    return int(ids[-1])


def seeded_splits(items: list, seed: int, what: str) -> dict[str, list]:
    """Shuffle once with `seed`, then cut index ranges: val and test get >= 1 item each, train the rest."""
    n = len(items)
    sizes = {k: max(1, round(n * f)) for k, f in SPLIT_FRACTIONS.items()}
    if n - sum(sizes.values()) < 1:
        raise ValueError(f"{what}: {n} distinct items, need at least 3 (train, val and test each get one)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val, test = order[: sizes["val"]], order[sizes["val"]: sizes["val"] + sizes["test"]]
    train = order[sizes["val"] + sizes["test"]:]
    return {name: [items[i] for i in sorted(idx)] for name, idx in (("train", train), ("val", val), ("test", test))}


def read_utf8(path: str | Path) -> str:
    """The file's text, or one ValueError naming the file (and the line of the first non-UTF-8 byte)."""
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"data file {path} does not exist")
    raw = file.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 (byte {raw[err.start]:#04x}); save the file as UTF-8") \
            from None


def read_prompts(path: str | Path) -> list[tuple[int, str]]:
    """(line number, prompt) for every non-blank line; whitespace runs become single spaces; duplicates dropped."""
    text = read_utf8(path)
    as_json = Path(path).suffix.lower() in (".jsonl", ".json")
    out, seen = [], set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if as_json:
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {number}: invalid JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"{path}, line {number}: expected an object with a string \"prompt\" field")
            line = record["prompt"]
        prompt = " ".join(line.split())
        if not prompt:
            raise ValueError(f"{path}, line {number}: empty prompt")
        if prompt not in seen:
            seen.add(prompt)
            out.append((number, prompt))
    if not out:
        raise ValueError(f"{path}: no prompts (the file is empty)")
    return out


def allowed_token(text: str) -> bool:
    """Whether a decoded token may appear inside a continuation (see the module docstring)."""
    if not text or not set(text) <= ALLOWED_CHARS or "  " in text:
        return False
    word = text.strip()
    if not word:
        return text == " "                      # SmolLM2 writes " 3" as " " + "3"
    if len(word) == 1 and word.isupper() and word not in WORD_CAPITALS:
        return False
    if word in ABBREVIATIONS or "http" in word.lower() or "www" in word.lower() or "//" in word:
        return False
    if len(word) > 1 and len(set(word)) == 1 and not word.isalnum():
        return False                            # repeated punctuation
    return "'" not in word or re.fullmatch(r"[A-Za-z]*'[A-Za-z]+", word) is not None


@register_task("continuation")
class Continuation(Task):
    description = "next-sentence continuation, target p(Z . | X)^(1/T): max log-likelihood vs diversity"
    data_kind = "file"        # --data: one file
    eval_splits = ("test",)
    min_len = 1
    max_len = 30
    eval_max_len = 30
    eval_temperature = 1.0
    eval_samples = 8
    report_logp_ref_max = True
    headline_metrics = ("logp_ref_max", "logp_ref", "diversity")
    excluded_methods = ("zero_shot",)     # no shots to drop: it would repeat `temperature` row for row
    opt_in_methods = ("tempered",)        # the paper's "LM tempered" baseline (T = the final reward temperature)
    costly_methods = ("ppo", "grpo", "flowrl", "tb_vargrad")   # over the cpu bench budget (docs/methods.md)
    # The task is about the lowered temperature: a run shorter than the paper's 750-step ramp (the cpu profile's
    # 40 steps) still ends at T = 0.8, the target the `tempered` row is compared with.
    training = TrainingDefaults(reward_temperature=(1.0, 0.8, 750), behaviour_mix=(0.25, 0.5, 0.25),
                                buffer_capacity=50, buffer_sampling="uniform", anneal_within_budget=True)
    metric_info = {"diversity": "1 - mean pairwise cosine of all-MiniLM-L6-v2 embeddings (final period stripped)",
                   "mean_words": "whitespace-separated words per sample"}

    def __init__(self, data: str | None = None, seed: int = 0):
        prompts = read_prompts(data or BUILTIN)
        self.builtin_data = None if data else BUILTIN
        self.data_source = (f"{data} ({len(prompts)} distinct prompts)" if data else
                            f"built-in sample ({len(prompts)} prompts written for gfnbench), "
                            f"not the paper's OpenWebText set")
        items = [Example(id=f"line{n}", question=p, answer="") for n, p in prompts]
        self.splits = seeded_splits(items, seed, str(data or BUILTIN))

    def examples(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"continuation has splits train, val, test; got {split!r}")
        return self.splits[split]

    def prompt(self, ex: Example) -> str:
        return ex.question

    def stop_id(self, tokenizer) -> int:
        return period_id(tokenizer)

    def allowed_tokens(self, tokenizer) -> Tensor:
        mask = token_mask(tokenizer, allowed_token)
        mask[list(tokenizer.all_special_ids)] = False
        mask[self.stop_id(tokenizer)] = True
        return mask

    def log_reward(self, model, tokenizer, traj, examples: list[Example]) -> Tensor:
        rows = [examples[g] for g in traj.group.tolist()]
        return context_suffix_log_reward(model, tokenizer, traj, [self.prompt(e) for e in rows],
                                         [[self.stop_id(tokenizer)]] * len(rows), self.min_len)

    def score(self, texts: list[str], ex: Example) -> dict[str, float]:
        from gfnbench.metrics import distinct_n, diversity

        clean = [t.strip().removesuffix(".").strip() for t in texts]
        return {"diversity": diversity(clean), "distinct_1": distinct_n(clean, 1), "distinct_2": distinct_n(clean, 2),
                "mean_words": sum(len(t.split()) for t in clean) / len(clean)}
