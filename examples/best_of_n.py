"""Example method for "Adding a method" in docs/contributing.md: best-of-n at test time, no training.

Run it on any task: `gfnbench run --task rng --method examples/best_of_n.py --best_of_n.candidates 8`. For every
sample the harness asks for, it draws `candidates` continuations from the base model (the task's prompt and
evaluation decoding), scores them with the task's reward and keeps the best. It shows the parts of the method
contract a trained example does not:

- `sample` returns a `Trajectories` built by the shared sampler, then keeps some of its rows with
  `traj.select(index)` (each kept row keeps its question's `group`);
- the reward is called through `spending.score_at_test`, which counts every scored candidate as a test-time
  reward call, so the record's budget states `test_reward_calls` (questions x samples x candidates);
- it does not declare `exact_sampler()`: its samples are no network's ancestral samples, so a task's exact
  metrics (rng's `tv_exact`) are "n/a" with `exact_na_reason` in the record, never the base model's numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from gfnbench.methods import Method, register_method
from gfnbench.objectives import terminal_log_reward
from gfnbench.policy import sample_task
from gfnbench.spending import score_at_test


@dataclass(frozen=True)
class BestOfNConfig:
    candidates: int = 4      # draws scored per returned sample

    def __post_init__(self):
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")


def best_in_blocks(rows: list[int], final: torch.Tensor, size: int) -> list[int]:
    """Split `rows` into consecutive blocks of `size` and keep each block's row with the highest `final`
    (the first one on a tie)."""
    blocks = [rows[i: i + size] for i in range(0, len(rows), size)]
    return [max(block, key=lambda r: (float(final[r]), -r)) for block in blocks]


@register_method("best_of_n", "best of n base-model samples by the task's reward, chosen at test time "
                 "(the example of docs/contributing.md)")
class BestOfN(Method):
    settings_class = BestOfNConfig

    def __init__(self, task, lm, ctx):
        super().__init__(task, lm, ctx)
        self.cfg = self.build_settings({})

    @property
    def exact_na_reason(self) -> str:
        return (f"best_of_n keeps the best of {self.cfg.candidates} candidates by reward: its samples are no "
                f"single network's distribution")

    def sample(self, examples, n, generator):
        k = self.cfg.candidates
        pool = sample_task(self.task, self.lm.model, self.lm.tokenizer, [self.task.prompt(ex) for ex in examples],
                           n * k, self.task.sampling(train=False), context=self.lm.context_length,
                           generator=generator)
        final = terminal_log_reward(score_at_test(self, pool, examples), pool.lengths)
        keep = []
        for g in range(len(examples)):
            keep += best_in_blocks((pool.group == g).nonzero().flatten().tolist(), final, k)
        return pool.select(keep)

    def config(self) -> dict:
        return {"best_of_n": asdict(self.cfg)}
