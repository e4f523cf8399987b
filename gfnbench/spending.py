"""What a method spends besides compute: the reward calls it makes and the labelled examples it reads.

A budget's `reward_evaluations` is a plan (steps x samples); the numbers here are counts. One reward call is one
trajectory scored by the task's `log_reward` (all its prefixes at once). The counters live where the reward is
called, so no method can forget them: `policy.sample_scored` and `GFlowNetModule.log_reward` count the training
calls against the network being trained (`reward_tally(policy)`, saved in its checkpoints by
`trained.TrainedModule`), and `score_at_test` counts a method's test-time calls (best-of-n) on the method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from weakref import WeakKeyDictionary

import torch
from torch import Tensor

from gfnbench.losses import check_log_reward
from gfnbench.models import adapters_off

if TYPE_CHECKING:
    from gfnbench.methods import Method
    from gfnbench.tasks.base import Example
    from gfnbench.trajectories import Trajectories


@dataclass
class RewardTally:
    """Reward calls made for one trained network, and the training examples whose rows were scored (on a label
    task the reward reads their gold label)."""

    calls: int = 0
    examples: set = field(default_factory=set)

    def add(self, traj: Trajectories, examples: list[Example]) -> None:
        self.calls += len(traj)
        self.examples.update(examples[g] for g in set(traj.group.tolist()))

    def state(self) -> dict:
        """What a checkpoint keeps: the count and the scored examples' ids (sorted: equal runs, equal bytes)."""
        return {"calls": self.calls, "example_ids": sorted({ex.id for ex in self.examples})}

    def load(self, state: dict, examples: list[Example]) -> None:
        ids = set(state["example_ids"])
        self.calls, self.examples = int(state["calls"]), {ex for ex in examples if ex.id in ids}


_TALLIES: WeakKeyDictionary = WeakKeyDictionary()


def reward_tally(network: torch.nn.Module) -> RewardTally:
    """The tally of reward calls made to train `network` (created at its first call)."""
    if network not in _TALLIES:
        _TALLIES[network] = RewardTally()
    return _TALLIES[network]


def score_at_test(method: Method, traj: Trajectories, examples: list[Example]) -> Tensor:
    """[B, L+1] the task's log reward of every row under the base model (adapters off), for a method that scores
    its candidates at test time (best-of-n); each row is one test-time reward call, counted on the method."""
    with torch.no_grad(), adapters_off(method.policy) as base:
        log_r = method.task.log_reward(base, method.lm.tokenizer, traj, examples)
    method.test_reward_calls += len(traj)
    check_log_reward(log_r, f"task {method.task.name}, test-time scoring", traj.lengths)
    return log_r


def distinct_draws(n_items: int, steps: int, batch_size: int) -> int:
    """Distinct items a shuffled loader has handed out after `steps` batches: every epoch is a permutation of all
    n items, so the first steps x batch draws are distinct until they cover all of them."""
    return min(n_items, steps * min(batch_size, n_items)) if n_items else 0
