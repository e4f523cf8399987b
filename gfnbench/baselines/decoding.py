"""Decoding baselines: the base LM, untrained, decoded five ways (same prompt, mask, tool and stop as GFlowNet).

They use the task's few-shot prompt (`default_shots`), which is the context the reward model scores under, so
they show what the base model's own posterior gives without any fine-tuning.
"""
from __future__ import annotations

from gfnbench.base_decoding import DecodingBaseline
from gfnbench.beam import beam_search
from gfnbench.methods import register_method
from gfnbench.trajectories import Trajectories


@register_method("greedy", "argmax decoding of the base model (one sample per prompt)")
class Greedy(DecodingBaseline):
    greedy = True
    deterministic = True
    exact_na_reason = "greedy decoding returns the one argmax answer: it samples no distribution"


@register_method("temperature", "ancestral sampling of the base model at T = 1")
class Temperature(DecodingBaseline):
    temperature = 1.0


@register_method("tempered", "ancestral sampling of the base model at the task's final reward temperature "
                 "(continuation: T = 0.8, the paper's 'LM tempered')", opt_in=True)
class Tempered(DecodingBaseline):
    """The untrained answer to "sample p^(1/T)": temper each token, which is not the same as tempering Z."""

    @property
    def temperature(self) -> float:
        return self.task.training.reward_temperature[1]


@register_method("nucleus", "nucleus (top-p = 0.95) sampling of the base model")
class Nucleus(DecodingBaseline):
    top_p = 0.95
    exact_na_reason = "nucleus sampling truncates each step's distribution to its top-p mass (not enumerated here)"


class BeamBaseline(DecodingBaseline):
    penalty = 0.0
    deterministic = True
    exact_na_reason = "beam search returns the most likely strings, not samples of a distribution"

    def exact_sampler(self) -> None:
        return None

    def plan(self, n: int) -> tuple[int, int]:
        """(num_beams, num_groups) for n returned sequences."""
        return n, 1

    def sample(self, examples, n, generator) -> Trajectories:
        tok = self.lm.tokenizer
        beams, groups = self.plan(n)
        return beam_search(self.lm.model, tok, self.prompts(examples), n, self.task.sampling(train=False),
                           num_beams=beams, num_groups=groups, diversity_penalty=self.penalty,
                           stop_id=self.task.stop_id(tok), allowed=self.task.allowed_tokens(tok),
                           tool=self.task.tool if self.task.has_tool else None, context=self.lm.context_length)

    def config(self) -> dict:
        return {"shots": self.task.default_shots, "diversity_penalty": self.penalty,
                "beams_and_groups_for_n_samples": "n beams, 1 group" if self.penalty == 0 else
                "2 * ceil(n / 2) beams in ceil(n / 2) groups of 2"}


@register_method("beam", "beam search (beams = samples per prompt, length penalty 0), all beams returned")
class Beam(BeamBaseline):
    pass


@register_method("diverse_beam", "diverse beam search (Hamming penalty 1.0, one group per 2 beams)")
class DiverseBeam(BeamBaseline):
    penalty = 1.0

    def plan(self, n: int) -> tuple[int, int]:
        groups = (n + 1) // 2
        return 2 * groups, groups
