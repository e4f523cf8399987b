"""Prompting baselines (paper §4.4): zero-shot and k-shot chain of thought, 10 samples at the task's evaluation
temperature with majority vote, exactly as trained methods are evaluated.

On a `LabelledClassification` task (subj) the paper's prompting rows are direct classifiers (the base LM's
preferred label after a k-shot prompt, no rationale), so these methods return that label as their one sample
and score it themselves (the harness prefers a method's `score_with_model` to the task's, which would read the
label as a rationale). Such a task may set `few_shot_k` (subj: all n labelled examples, as the paper's
10/20/50-shot rows)."""
from __future__ import annotations

from gfnbench.baselines.decoding import DecodingBaseline
from gfnbench.methods import register_method
from gfnbench.tasks.base import LabelledClassification


class ShotsPrompting(DecodingBaseline):
    shots = 0

    @property
    def classifier(self) -> bool:
        return isinstance(self.task, LabelledClassification)

    @property
    def k(self) -> int:
        if not self.shots:
            return 0
        return (self.task.few_shot_k or self.shots) if self.classifier else self.shots

    def prompt_for(self, ex):
        return self.task.classifier_prompt(ex, self.k) if self.classifier else self.task.shots_prompt(ex, self.k)

    def sample(self, examples, n, generator):
        if self.classifier:
            return self.task.prompted_classifier(self.lm, examples, self.k)
        return super().sample(examples, n, generator)

    def score_with_model(self, model, tokenizer, texts, ex) -> dict | None:
        return {"accuracy": float(texts[0].strip() == ex.answer)} if self.classifier else None

    @property
    def exact_temperature(self):
        return self.task.eval_temperature

    def decoding(self):
        return self.task.sampling(train=False)

    def config(self) -> dict:
        if self.classifier:
            return {"shots": self.k, "classifier": "argmax of the label's log-likelihood after the prompt"}
        return {"shots": self.k, "temperature": self.task.eval_temperature}


@register_method("zero_shot", "zero-shot prompting of the base model (task prompt only)")
class ZeroShot(ShotsPrompting):
    shots = 0


@register_method("few_shot", "3-shot prompting of the base model (arith: chain of thought; infill: gold middles; "
                 "subj: all n labelled examples, direct classifier)",
                 opt_in=True)
class FewShot(ShotsPrompting):
    shots = 3
