"""Subjectivity classification with a latent rationale (paper §4.3; docs/paper.md#subjectivity-classification).

X = `Classify this movie review as objective or subjective: "{text}" This review is`; the policy writes a 1-5
token rationale Z and stops with eos; the answer Y = `, so it is {label}.`. Reward, for every prefix Z_<=j:
log p(Z_<=j Y_gold | X) under the base LM, minus 50 when the LM given X Z_<=j would predict the other label
(log p(Y_other | X Z) > log p(Y_gold | X Z)), the paper's wrong-prediction penalty. The prediction from a
rationale is the same comparison at test time; the n sampled rationales vote, and an even split goes to
`subjective` (the paper: "objective if more than 50% of the votes").

Data: SUBJ's two files in one folder (`quote.tok.gt9.5000` = subjective, `plot.tok.gt9.5000` = objective,
one sentence per line, UTF-8; blank lines are skipped), `--data PATH`, else the built-in 200-sentence sample
in gfnbench/tasks/data/subj/ (written for gfnbench; not SUBJ). Sentences are de-duplicated (a sentence found under
both labels is dropped), shuffled with `seed`, and cut by index: test = the first 20% (at most 2,000: the
paper's 2,000 of 10,000), val = the next 10% (at most 200), the rest is the training pool. train = the first
n_labelled pool sentences shorter than 25 words (the paper's filter), so the 10 are the first 10 of the 20 and
of the 50, as the paper's nested files are; not label-stratified (the paper's 10 are 7/3). `subj`, `subj20`,
`subj50` are the 10/20/50-example regimes.

Prompting baselines: the paper's zero-/few-shot rows are direct classifiers, not rationale samplers:
`Classify ...: "{text}" It is` after k demos (`... It is {label}.`, one per line; few-shot k = all n labelled,
as the paper's 10/20/50), comparing log p(" objective") with log p(" subjective"). `prompted_classifier`
does this; gfnbench/baselines/prompting.py calls it for tasks that have it and scores the label it returns.
Label-only rows (baselines/sft.py, baselines/mstep.py): `sft` is the paper's classifier fine-tuned on
the n labels; `gflownet_mstep` adds the paper's M-step (a classifier fine-tuned on X + GFlowNet rationales).
The replay buffer starts with the paper's "wishful" rationales (`buffer_seeds`: 20 base-LM continuations of
`X {gold} because it is` per labelled example) and de-duplicates at the paper's tolerance, 0.1.
"""
from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import Tensor

from gfnbench.devices import model_device
from gfnbench.metrics import majority_vote
from gfnbench.sampling import PromptTooLong, context_suffix_log_reward, continuation_log_probs, encode, sample
from gfnbench.tasks.base import Example, LabelledClassification, TrainingDefaults, register_task
from gfnbench.trajectories import Trajectories, from_rows

LABELS = ("objective", "subjective")
FILES = {"objective": "plot.tok.gt9.5000", "subjective": "quote.tok.gt9.5000"}
DEFAULT_DATA = Path(__file__).parent / "data" / "subj"
QUERY = 'Classify this movie review as objective or subjective: "{}"'
WRONG_PREDICTION_PENALTY = -50.0
MAX_TRAIN_WORDS = 25          # training sentences have fewer words than this (paper)
WISHFUL_SEEDS = 20            # "wishful" rationales sampled per labelled example to seed the buffer (paper)


def read_label_file(path: Path) -> list[tuple[int, str]]:
    """(line number, sentence) of every non-blank line; one ValueError naming the file and line otherwise."""
    if not path.is_file():
        raise ValueError(f"SUBJ data: {path} is missing (a --data folder needs {' and '.join(FILES.values())})")
    out = []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise ValueError(f"SUBJ data: {path} line {number} is not UTF-8 ({err.reason} at byte {err.start}); "
                             f"the SUBJ v1.0 download is usually read as Latin-1: convert it with "
                             f"`iconv -f latin1 -t utf-8`") from None
        if line:
            out.append((number, line))
    if not out:
        raise ValueError(f"SUBJ data: {path} has no sentences")
    return out


def load_sentences(folder: Path) -> list[Example]:
    """Both files, de-duplicated in file order; sentences listed under both labels are dropped."""
    if not folder.is_dir():
        raise ValueError(f"SUBJ data: folder {folder} does not exist (it must hold {' and '.join(FILES.values())})")
    first: dict[str, Example] = {}
    conflicting = set()
    for label in LABELS:
        for number, text in read_label_file(folder / FILES[label]):
            seen = first.setdefault(text, Example(f"{label[:3]}{number}", text, label))
            if seen.answer != label:
                conflicting.add(text)
    return [ex for text, ex in first.items() if text not in conflicting]


def make_splits(sentences: list[Example], seed: int, n_labelled: int, folder: Path) -> dict[str, list[Example]]:
    """Disjoint by construction: test, val and train pool are index ranges of one shuffled, de-duplicated list."""
    sentences = list(sentences)
    random.Random(seed).shuffle(sentences)
    n_test, n_val = min(2000, len(sentences) // 5), min(200, len(sentences) // 10)
    pool = [e for e in sentences[n_test + n_val:] if len(e.question.split()) < MAX_TRAIN_WORDS]
    if n_test == 0 or n_val == 0 or len(pool) < n_labelled:
        raise ValueError(f"SUBJ data in {folder}: {len(sentences)} distinct sentences give {n_test} test, {n_val} val "
                         f"and {len(pool)} training sentences of < {MAX_TRAIN_WORDS} words; at least 1, 1 and "
                         f"{n_labelled} needed")
    return {"train": pool[:n_labelled], "val": sentences[n_test: n_test + n_val], "test": sentences[:n_test]}


def vote(predictions: list[str]) -> str | None:
    """Majority label; an even split goes to subjective (listed first, and majority_vote keeps the first seen)."""
    return majority_vote(sorted(predictions, key=lambda p: p != "subjective"))


@register_task("subj")
class Subjectivity(LabelledClassification):
    description = "SUBJ objective/subjective with a 1-5 token latent rationale, 10 labelled examples"
    data_kind = "folder"        # --data: the SUBJ folder with its two files
    default_labelled = 10
    eval_splits = ("test",)
    min_len = 1
    max_len = 5
    eval_max_len = 5
    eval_temperature = 1.0    # paper: 10 rationales at T = 1, majority vote
    eval_samples = 10
    min_eval_questions = 40   # accuracy on the cpu profile's 8 questions moves in 0.125 steps; 40 = built-in test
    labels = LABELS
    headline_metrics = ("accuracy",)
    scored_against = {"accuracy": "label", "rationale_accuracy": "label"}
    opt_in_methods = ("few_shot", "sft", "gflownet_mstep")
    # Decoding variants of a 1-5 token rationale are not the paper's baselines; `temperature` (base-model
    # rationales at T = 1, majority vote) stays as the untrained version of the GFlowNet row.
    excluded_methods = ("greedy", "nucleus", "beam", "diverse_beam")
    # The paper's rows (zero-shot, few-shot, SFT, GFlowNet with the M-step) are all in the cpu bench; the M-step
    # repeats the gflownet row's training before its own (431 s a seed on 2 cores). The RL rows run with --methods.
    costly_methods = ("ppo", "grpo", "flowrl", "tb_vargrad")
    paired_comparisons = (("gflownet_mstep", "sft"),)    # the paper's question: does the M-step beat 10 labels?
    training = TrainingDefaults(reward_temperature=(1.2, 1.0, 150), behaviour_mix=(0.25, 0.25, 0.5),
                                buffer_capacity=100, buffer_sampling="reward", dedup_tol=0.1)

    def __init__(self, data: str | None = None, seed: int = 0, n_labelled: int | None = None):
        self.n_labelled = self.default_labelled if n_labelled is None else n_labelled
        if self.n_labelled < 1:
            raise ValueError(f"n_labelled must be >= 1, got {self.n_labelled}")
        folder = Path(data) if data else DEFAULT_DATA
        sentences = load_sentences(folder)
        self.splits = make_splits(sentences, seed, self.n_labelled, folder)
        self.builtin_data = None if data else DEFAULT_DATA
        self.data_source = str(folder) if data else \
            f"built-in sample ({len(sentences)} sentences written for gfnbench), not SUBJ"
        self.few_shot_k = self.n_labelled       # the paper's few-shot rows use all n labelled examples

    def examples(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"{self.name} has splits train, val, test; got {split!r}")
        return self.splits[split]

    def prompt(self, ex: Example) -> str:
        return f"{QUERY.format(ex.question)} This review is"

    def label_suffix(self, label: str) -> str:
        return f", so it is {label}."

    def demonstrations(self) -> list[Example]:
        return self.splits["train"]

    def demonstration(self, ex: Example) -> str:
        return f"{QUERY.format(ex.question)} It is {ex.answer}."

    def buffer_seeds(self, model, tokenizer, ex: Example, generator: torch.Generator | None = None) -> list[str]:
        """The paper's "wishful" rationales: the base LM continues `X {gold} because it is` (T = 1, <= 5 tokens),
        each cut before its first token holding anything but letters, digits and spaces (punctuation, newline,
        eos); distinct ones with a word are kept."""
        traj = sample(model, tokenizer, [f"{self.prompt(ex)} {ex.answer} because it is"], WISHFUL_SEEDS,
                      self.sampling(train=True, temperature=1.0), stop_id=self.stop_id(tokenizer),
                      generator=generator)
        seeds = []
        for b in range(len(traj)):
            words = []
            for token in traj.state_ids[b, : int(traj.lengths[b])].tolist():
                piece = tokenizer.decode([token])
                if not piece or not all(c.isalnum() or c == " " for c in piece):
                    break
                words.append(piece)
            while words and not words[-1].strip():
                words.pop()                      # no trailing lone-space token
            text = "".join(words)
            if text and text not in seeds and len(encode(tokenizer, [text])[0]) <= self.max_len:
                seeds.append(text)
        return seeds

    def log_reward(self, model, tokenizer, traj, examples: list[Example]) -> Tensor:
        rows = [examples[g] for g in traj.group.tolist()]
        contexts = [self.prompt(e) for e in rows]
        per_label = {label: context_suffix_log_reward(model, tokenizer, traj, contexts,
                                                      encode(tokenizer, [self.label_suffix(label)]) * len(rows),
                                                      self.min_len)
                     for label in LABELS}
        predicts_objective = per_label["objective"] > per_label["subjective"]   # a tie predicts subjective
        gold_objective = torch.tensor([e.answer == "objective" for e in rows], device=traj.device)[:, None]
        gold = torch.where(gold_objective, per_label["objective"], per_label["subjective"])
        wrong = ((predicts_objective != gold_objective)
                 & (torch.arange(gold.shape[1], device=traj.device) <= traj.lengths[:, None]))
        return gold + WRONG_PREDICTION_PENALTY * wrong     # -inf (too short) stays -inf

    def predict(self, model, tokenizer, ex: Example, texts: list[str]) -> list[str]:
        """The base LM's label after each rationale: log p(Y_objective | X Z) vs log p(Y_subjective | X Z)."""
        x = encode(tokenizer, [self.prompt(ex)])[0]
        z = encode(tokenizer, texts)              # decoded samples are re-encoded: the harness hands over text
        suffix = {label: encode(tokenizer, [self.label_suffix(label)])[0] for label in LABELS}
        lp = continuation_log_probs(model, [(x + zi, suffix[label]) for zi in z for label in LABELS])
        return ["objective" if float(lp[2 * i].sum()) > float(lp[2 * i + 1].sum()) else "subjective"
                for i in range(len(texts))]

    @torch.no_grad()
    def score_with_model(self, model, tokenizer, texts: list[str], ex: Example) -> dict[str, float]:
        preds = self.predict(model, tokenizer, ex, texts)
        return {"accuracy": float(vote(preds) == ex.answer),
                "rationale_accuracy": sum(p == ex.answer for p in preds) / len(preds)}

    def sample_fields(self, ex: Example) -> dict[str, str]:
        return {"label": ex.answer}

    def score(self, texts: list[str], ex: Example) -> dict[str, float]:
        return {"rationale_words": sum(len(t.split()) for t in texts) / len(texts),
                "empty": sum(not t.strip() for t in texts) / len(texts)}

    def classifier_prompt(self, ex: Example, k: int) -> str:
        """The paper's prompting baseline: k labelled demos, one per line, then the query ending in `It is`."""
        if k > len(self.demonstrations()):
            raise ValueError(f"{self.name} has {len(self.demonstrations())} labelled examples, {k} shots asked")
        demos = "".join(self.demonstration(d) + "\n" for d in self.demonstrations()[:k])
        return f"{demos}{QUERY.format(ex.question)} It is"

    @torch.no_grad()
    def prompted_classifier(self, lm, examples: list[Example], k: int) -> Trajectories:
        """One trajectory per example whose text is the label the base LM prefers after the k-shot prompt."""
        tok = lm.tokenizer
        prompts = [self.classifier_prompt(ex, k) for ex in examples]
        ids = encode(tok, prompts)
        labels = {label: encode(tok, [f" {label}"])[0] for label in LABELS}
        for p, text in zip(ids, prompts):
            if len(p) + max(map(len, labels.values())) > lm.context_length:
                raise PromptTooLong(f"{self.name}: the {k}-shot prompt has {len(p)} tokens, more than the model's "
                                    f"context of {lm.context_length}; use fewer labelled examples or a "
                                    f"longer-context model. Prompt starts: {text[:60]!r}")
        chosen, log_pf = [], []
        for p in ids:
            lp = continuation_log_probs(lm.model, [(p, labels[label]) for label in LABELS])
            best = 0 if float(lp[0].sum()) > float(lp[1].sum()) else 1     # a tie goes to subjective
            chosen.append(LABELS[best])
            log_pf.append(lp[best].tolist())
        states = [labels[c] for c in chosen]
        return from_rows(prompts, list(range(len(examples))), ids, states, [[True] * len(s) for s in states],
                         [True] * len(states), log_pf, [[0.0] * (len(s) + 1) for s in states],
                         [f" {c}" for c in chosen], lm.pad_id, device=model_device(lm.model))


@register_task("subj20")
class Subjectivity20(Subjectivity):
    description = "SUBJ objective/subjective with a 1-5 token latent rationale, 20 labelled examples"
    default_labelled = 20


@register_task("subj50")
class Subjectivity50(Subjectivity):
    description = "SUBJ objective/subjective with a 1-5 token latent rationale, 50 labelled examples"
    default_labelled = 50
