"""Story infilling (paper §4.2; docs/paper.md#story-infilling): write the missing 4th sentence of a 5-sentence story.

X = s1 s2 s3 (beginning), Y = s5 (ending), Z = s4 (the middle, the latent). The policy sees
`Beginning: {s1} {s2} {s3}\\nEnding: {s5}\\nMiddle:` (the official code's template; the paper's appendix quotes
"End:" with other spacing, and "Ending" reads as what it is) and writes " {s4}" with a leading space.

The reward is the PAPER's, not the official script's: log R(Z) = log p(Z Y | X) under the base LM (adapters off)
with X given as plain story text "s1 s2 s3", i.e. context "s1 s2 s3", then the prefix, then the ending, for
every prefix (`every_prefix_log_reward`). The paper's reward LM is GPT-2 Large first fine-tuned on
the training stories: that is the `infill_tuned` task (a full fine-tune of a copy of the base LM, 5 epochs on
CPU, the paper's lr 1e-4; the paper ran 50); `infill` scores with the untuned base LM.

Stop rule (choice): by default the stop action is the "." token, as in `continuation`: Z is exactly one
sentence, the sampled text holds it without its period, and the period is scored as the first token of the
suffix ". {s5}". The paper stops at eos; a small instruct model prompted with raw text rarely emits eos after one
sentence, so every untrained baseline would run on to max_len writing more lines, and the metrics would measure
when methods stop rather than what they write. `stop="eos"` gives the paper's rule (suffix " {s5}", no
vocabulary mask). Lengths: the paper's 5-25 tokens count the final period, so the "." rule uses 4-24 actions
(the same sentences); `stop="eos"` uses 5-25. With ".", the mask blocks newlines, special tokens and every
other token holding a period (the paper masks nothing), so the gold middle is a valid trajectory only if s4 ends
in "." and holds no other period; `target` is None otherwise (those stories seed no buffer / SFT example).

Data: the built-in sample (gfnbench/tasks/data/stories.csv) or `--data PATH`, a ROCStories CSV with a header and the
columns storyid, sentence1..sentence5 (storytitle optional). Duplicate stories are dropped, then a seeded
shuffle is cut into train/val/test (70/10/20): disjoint by construction.
"""
from __future__ import annotations

import csv
import io
from dataclasses import asdict
from pathlib import Path

from torch import Tensor

from gfnbench.sampling import context_suffix_log_reward
from gfnbench.tasks.base import Example, Task, TrainingDefaults, register_task, token_mask
from gfnbench.tasks.continuation import period_id, read_utf8, seeded_splits
from gfnbench.text_finetune import TextFinetuneConfig, finetune_on_texts

BUILTIN = Path(__file__).parent / "data" / "stories.csv"
SENTENCES = [f"sentence{i}" for i in range(1, 6)]
REQUIRED = ["storyid"] + SENTENCES
LENGTHS = {".": (4, 24), "eos": (5, 25)}      # (min_len, max_len) in actions


def read_stories(path: str | Path) -> list[Example]:
    """One Example per distinct story (question = s1 s2 s3, rationale = s4, answer = s5), or one ValueError."""
    reader = csv.DictReader(io.StringIO(read_utf8(path), newline=""))
    if not reader.fieldnames:
        raise ValueError(f"{path}: empty file (expected a header row: {', '.join(REQUIRED)})")
    header = [h.strip() for h in reader.fieldnames]
    reader.fieldnames = header
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ValueError(f"{path}, line 1: missing column {', '.join(missing)} (header: {', '.join(header)})")
    stories, seen, ids = [], set(), set()
    for row in reader:
        line = reader.line_num
        sentences = tuple(" ".join((row.get(c) or "").split()) for c in SENTENCES)
        for column, text in zip(SENTENCES, sentences):
            if not text:
                raise ValueError(f"{path}, line {line}: story {row.get('storyid')!r} has an empty {column} "
                                 f"(every story needs 5 non-empty sentences)")
        if sentences in seen:
            continue
        seen.add(sentences)
        story_id = (row.get("storyid") or "").strip() or f"line{line}"
        story_id = story_id if story_id not in ids else f"{story_id}@line{line}"
        ids.add(story_id)
        stories.append(Example(id=story_id, question=" ".join(sentences[:3]), answer=sentences[4],
                               rationale=sentences[3], meta={"title": (row.get("storytitle") or "").strip()}))
    if not stories:
        raise ValueError(f"{path}: no stories (only a header)")
    return stories


def for_scoring(text: str) -> str:
    """§3.5: leading space stripped, final period removed (from samples and the reference alike)."""
    return text.strip().removesuffix(".").strip()


@register_task("infill")
class Infill(Task):
    description = "story infilling: the 4th sentence given sentences 1-3 and 5, target p(Z Y | X)"
    data_kind = "file"        # --data: one file
    eval_splits = ("test",)
    min_len, max_len = LENGTHS["."]
    eval_max_len = max_len
    eval_temperature = 0.9          # the paper's evaluation temperature
    eval_samples = 8
    opt_in_methods = ("few_shot", "sft")
    costly_methods = ("ppo", "grpo", "flowrl", "tb_vargrad")   # over the cpu bench budget (docs/methods.md)
    headline_metrics = ("bleu4", "bertscore_f1", "logp_ref", "diversity")
    scored_against = {"bleu4": "reference", "gleu": "reference", "bertscore_f1": "reference"}
    training = TrainingDefaults(reward_temperature=(1.1, 0.85, 100), behaviour_mix=(0.25, 0.5, 0.25),
                                buffer_capacity=50, buffer_sampling="reward")

    def __init__(self, data: str | None = None, seed: int = 0, stop: str = "."):
        if stop not in LENGTHS:
            raise ValueError(f"infill stop must be '.' or 'eos', got {stop!r}")
        self.stop = stop
        self.min_len, self.max_len = LENGTHS[stop]
        self.eval_max_len = self.max_len
        stories = read_stories(data or BUILTIN)
        self.builtin_data = None if data else BUILTIN
        self.data_source = (f"{data} ({len(stories)} distinct stories)" if data else
                            f"built-in sample ({len(stories)} stories written for gfnbench in the ROCStories "
                            f"format), not ROCStories")
        self.splits = seeded_splits(stories, seed, str(data or BUILTIN))

    @property
    def metric_info(self) -> dict:
        from gfnbench.metrics import bleu_signature

        return {"bleu4": f"sacrebleu sentence BLEU (0-100), {bleu_signature()}",
                "gleu": "nltk sentence_gleu, 1-4-grams (0-1)",
                "bertscore_f1": "bert_score F1 with the local all-MiniLM-L6-v2, not baseline-rescaled",
                "reference": "s4 and each sample stripped of surrounding spaces and the final period"}

    def sample_fields(self, ex: Example) -> dict[str, str]:
        """The gold middle (s4) is what BLEU, GLEU and BERTScore compare with; the ending (s5) is the prompt's."""
        return {"reference": ex.rationale, "ending": ex.answer}

    def examples(self, split: str) -> list[Example]:
        if split not in self.splits:
            raise ValueError(f"infill has splits train, val, test; got {split!r}")
        return self.splits[split]

    def prompt(self, ex: Example) -> str:
        return f"Beginning: {ex.question}\nEnding: {ex.answer}\nMiddle:"

    def target(self, ex: Example) -> str | None:
        if self.stop == "eos":
            return f" {ex.rationale}"
        body = ex.rationale.removesuffix(".")
        return f" {body}" if ex.rationale.endswith(".") and "." not in body else None

    def demonstrations(self) -> list[Example]:
        return [e for e in self.splits["train"] if self.target(e) is not None][:3]

    def demonstration(self, ex: Example) -> str:
        return f"{self.prompt(ex)} {ex.rationale}\n"      # shots_prompt adds one more newline: a blank line

    def stop_id(self, tokenizer) -> int:
        return period_id(tokenizer) if self.stop == "." else int(tokenizer.eos_token_id)

    def allowed_tokens(self, tokenizer) -> Tensor | None:
        if self.stop == "eos":
            return None                 # the paper constrains nothing
        mask = token_mask(tokenizer, lambda t: bool(t) and not set(t) & set(".\n\r"))
        mask[list(tokenizer.all_special_ids)] = False
        mask[self.stop_id(tokenizer)] = True
        return mask

    def reward_suffix(self, ex: Example) -> str:
        return f". {ex.answer}" if self.stop == "." else f" {ex.answer}"

    def log_reward(self, model, tokenizer, traj, examples: list[Example]) -> Tensor:
        rows = [examples[g] for g in traj.group.tolist()]
        suffix = [tokenizer(self.reward_suffix(e), add_special_tokens=False)["input_ids"] for e in rows]
        return context_suffix_log_reward(model, tokenizer, traj, [e.question for e in rows], suffix, self.min_len)

    def score(self, texts: list[str], ex: Example) -> dict[str, float]:
        from gfnbench.metrics import bertscore_f1, bleu4, diversity, gleu

        hyps, ref = [for_scoring(t) for t in texts], for_scoring(ex.rationale)
        n = len(hyps)
        return {"bleu4": sum(bleu4(h, ref) for h in hyps) / n, "gleu": sum(gleu(h, ref) for h in hyps) / n,
                "bertscore_f1": sum(bertscore_f1(hyps, [ref] * n)) / n, "diversity": diversity(hyps)}


@register_task("infill_tuned")
class InfillTunedReward(Infill):
    """The paper's reward LM: the base LM first fully fine-tuned on the training stories (as plain 5-sentence text),
    once per run, on a copy; the policy still starts from the untuned base, and logp_ref stays the base's."""

    description = "story infilling with the reward LM first fine-tuned on the training stories (paper §4.2)"
    reward_finetune = TextFinetuneConfig()

    def __init__(self, data: str | None = None, seed: int = 0, stop: str = "."):
        super().__init__(data, seed, stop)
        self.tuned_reward_lm = None
        self.reward_finetune_curve: list[float] = []

    def training_texts(self) -> list[str]:
        return [f"{e.question} {e.rationale} {e.answer}" for e in self.splits["train"]]

    def reward_lm(self, base, tokenizer):
        """The tuned copy, made from the first model the reward is asked of (the base: adapters are dropped)."""
        if self.tuned_reward_lm is None:
            self.tuned_reward_lm, self.reward_finetune_curve = finetune_on_texts(base, tokenizer,
                                                                                 self.training_texts(),
                                                                                 self.reward_finetune)
        return self.tuned_reward_lm

    def log_reward(self, model, tokenizer, traj, examples: list[Example]) -> Tensor:
        return super().log_reward(self.reward_lm(model, tokenizer), tokenizer, traj, examples)

    def config(self) -> dict:
        curve = self.reward_finetune_curve
        return {"reward_lm": "the base LM fully fine-tuned on the training stories (a copy)",
                "reward_finetune": asdict(self.reward_finetune), "reward_finetune_steps": len(curve),
                "reward_finetune_loss_first_last": [curve[0], curve[-1]] if curve else None}
