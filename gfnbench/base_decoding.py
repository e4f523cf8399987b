"""`DecodingBaseline`: the base of every row that decodes the untrained base model (the decoding baselines and
the prompting rows), with the same prompt, mask, tool and stop as GFlowNet.
"""
from __future__ import annotations

from gfnbench.methods import ExactSampler, Method
from gfnbench.policy import sample_task
from gfnbench.tasks.base import Example
from gfnbench.trajectories import Trajectories


class DecodingBaseline(Method):
    """Sampling-based decoding of the base model; subclasses fix the decoding rule."""

    greedy = False
    temperature = 1.0
    top_p = 1.0

    def prompt_for(self, ex: Example) -> str:
        return self.task.shots_prompt(ex, self.task.default_shots)

    def prompts(self, examples: list[Example]) -> list[str]:
        return [self.prompt_for(ex) for ex in examples]

    @property
    def exact_temperature(self) -> float | None:
        return None if self.greedy or self.top_p < 1 else self.temperature

    def exact_sampler(self) -> ExactSampler | None:
        """Plain sampling of the base model at the decoding temperature (greedy and nucleus are not)."""
        temperature = self.exact_temperature
        return None if temperature is None else ExactSampler(self.lm.model, temperature)

    def labelled_examples(self) -> dict[str, list[Example]]:
        """The task's demonstrations in the prompt (arith: 3 gold rationales)."""
        return {"demonstrations": self.task.demonstrations()[: self.task.default_shots]}

    def decoding(self):
        return self.task.sampling(train=False, temperature=self.temperature, greedy=self.greedy, top_p=self.top_p)

    def rows_per_question(self, n: int) -> int:
        return 1 if self.greedy else n

    def sample(self, examples, n, generator) -> Trajectories:
        tok = self.lm.tokenizer
        n = self.rows_per_question(n)
        return sample_task(self.task, self.lm.model, tok, self.prompts(examples), n, self.decoding(),
                           context=self.lm.context_length, generator=generator)

    def config(self) -> dict:
        return {"shots": self.task.default_shots, "greedy": self.greedy, "temperature": self.temperature,
                "top_p": self.top_p}
