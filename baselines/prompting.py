"""Prompting baselines (paper §4.4): zero-shot and k-shot chain of thought, 10 samples at the task's evaluation
temperature with majority vote, exactly as trained methods are evaluated."""
from __future__ import annotations

from gfnbench.methods import register_method
from gfnbench.baselines.decoding import DecodingBaseline


class ShotsPrompting(DecodingBaseline):
    shots = 0

    def prompt_for(self, ex):
        return self.task.shots_prompt(ex, self.shots)

    @property
    def exact_temperature(self):
        return self.task.eval_temperature

    def decoding(self):
        return self.task.sampling(train=False)

    def config(self) -> dict:
        return {"shots": self.shots, "temperature": self.task.eval_temperature}


@register_method("zero_shot", "zero-shot prompting of the base model (task prompt only)")
class ZeroShot(ShotsPrompting):
    shots = 0


@register_method("few_shot", "3-shot chain-of-thought prompting of the base model", tasks=("arith",))
class FewShot(ShotsPrompting):
    shots = 3
