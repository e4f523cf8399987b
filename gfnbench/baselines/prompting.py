"""Prompting baselines (paper §4.4): zero-shot and k-shot chain of thought, 10 samples at the task's evaluation
temperature with majority vote, exactly as trained methods are evaluated.

On a `LabelledClassification` task (subj) the paper's prompting rows are direct classifiers (the base LM's
preferred label after a k-shot prompt, no rationale), so these methods return that label as their one sample
and score it themselves (the harness prefers a method's `score_with_model` to the task's, which would read the
label as a rationale). How many shots the few_shot row takes is gfnbench/shots.py's rule (subj: all n labelled
examples, as the paper's 10/20/50-shot rows)."""
from __future__ import annotations

from gfnbench.base_decoding import DecodingBaseline
from gfnbench.methods import ExactSampler, register_method
from gfnbench.shots import FEW_SHOT_K, few_shot_k, shots_prompt
from gfnbench.tasks.base import LabelledClassification


class ShotsPrompting(DecodingBaseline):
    """A prompting row: k demonstrations before the task's prompt (`k` set by the subclass)."""

    @property
    def classifier(self) -> bool:
        return isinstance(self.task, LabelledClassification)

    @property
    def k(self) -> int:
        raise NotImplementedError

    def prompt_for(self, ex):
        return shots_prompt(self.task, ex, self.k)

    def sample(self, examples, n, generator):
        if self.classifier:
            return self.task.prompted_classifier(self.lm, examples, self.k)
        return super().sample(examples, n, generator)

    def score_with_model(self, model, tokenizer, texts, ex) -> dict | None:
        return {"accuracy": float(texts[0].strip() == ex.answer)} if self.classifier else None

    exact_na_reason = "a direct classifier: its one sample is the label the base model prefers, not a draw"

    @property
    def exact_temperature(self):
        return None if self.classifier else self.task.eval_temperature

    def exact_sampler(self) -> ExactSampler | None:
        """The base model sampled at the evaluation temperature after the k-shot prompt (not on a label task)."""
        return None if self.classifier else ExactSampler(self.lm.model, self.task.eval_temperature)

    def labelled_examples(self) -> dict:
        """The k demonstrations before every prompt (subj: k labelled sentences with their labels)."""
        return {"demonstrations": self.task.demonstrations()[: self.k]}

    def decoding(self):
        return self.task.sampling(train=False)

    def config(self) -> dict:
        if self.classifier:
            return {"shots": self.k, "classifier": "argmax of the label's log-likelihood after the prompt"}
        return {"shots": self.k, "temperature": self.task.eval_temperature}


@register_method("zero_shot", "zero-shot prompting of the base model (task prompt only)")
class ZeroShot(ShotsPrompting):
    k = 0


@register_method("few_shot", f"{FEW_SHOT_K}-shot prompting of the base model (arith: chain of thought; infill: gold "
                 "middles; subj: all n labelled examples, direct classifier)",
                 opt_in=True)
class FewShot(ShotsPrompting):
    @property
    def k(self) -> int:
        return few_shot_k(self.task)
