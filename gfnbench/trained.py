"""`TrainedModule`: the LightningModule base of every row that fine-tunes a policy on batches it samples.

Every such module holds the same things (the task with its token mask and stop token, the training prompts, a
seeded generator, the learning curve, the tally of reward calls made to train its policy) and saves the same part
of its state in a checkpoint (that generator, the curve and the tally). They live here once, so a module adds
only its networks, its loss and what else it must save.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import lightning as L
import torch

from gfnbench.checkpoints import ResumableModule
from gfnbench.devices import gather, rank_seed, seeded_generator
from gfnbench.spending import RewardTally, reward_tally

if TYPE_CHECKING:
    from gfnbench.models import LanguageModel
    from gfnbench.tasks.base import Example, Task


class SeededStreams:
    """LightningModule mixin for modules that sample while training from `self.generator` (seeded `self.seed`):
    at setup, where the training device and the process are known, the generator moves to that device and each
    process gets its own stream (devices.rank_seed). Rank 0 on the CPU keeps the generator it was built with, so
    a one-process CPU run draws exactly what it always drew."""

    seed: int
    generator: torch.Generator

    def setup(self, stage: str) -> None:
        device, process = self.trainer.strategy.root_device, self.global_rank
        if process != 0 or self.generator.device != device:
            self.generator = seeded_generator(rank_seed(self.seed, process), device)


class TrainedModule(ResumableModule, SeededStreams, L.LightningModule):
    """What the trained rows' modules share. A subclass sets `self.policy` (and its heads) after calling this
    `__init__`, appends a dict per step to `self.curve`, and saves what else a resumed run needs through
    `own_training_state` / `load_own_training_state`. Building it draws nothing from the global RNG."""

    def __init__(self, task: Task, lm: LanguageModel, cfg, train_examples: list[Example], seed: int = 0):
        super().__init__()
        self.task, self.tokenizer, self.cfg, self.examples = task, lm.tokenizer, cfg, train_examples
        self.allowed, self.stop_id = task.allowed_tokens(lm.tokenizer), task.stop_id(lm.tokenizer)
        self.context = lm.context_length
        self.seed, self.generator = seed, torch.Generator().manual_seed(seed)
        self.curve: list[dict] = []
        self.tallies_by_process: list[dict] | None = None   # every process's reward tally, once training ends

    def reward_tally(self) -> RewardTally:
        """This process's reward calls for `self.policy` (counted by policy.sample_scored and the GFlowNet's
        log_reward)."""
        return reward_tally(self.policy)

    def spent_by_process(self) -> list[dict]:
        """Each process's tally state ({"calls", "example_ids"}): gathered when training ended, else this one's."""
        return self.tallies_by_process or [self.reward_tally().state()]

    def on_train_end(self) -> None:
        self.tallies_by_process = gather(self.reward_tally().state())    # every process reaches this hook

    def training_state(self) -> dict:
        """What a resumed run needs to continue exactly besides the weights: the sampling stream, the curve, the
        reward calls so far and the module's own state."""
        return {"generator": self.generator.get_state(), "curve": self.curve,
                "reward_tally": self.reward_tally().state(), **self.own_training_state()}

    def load_training_state(self, state: dict) -> None:
        if "reward_tally" not in state:
            raise ValueError("this checkpoint predates the count of reward calls, so a resumed run would undercount "
                             "them: rerun with --resume false")
        self.generator.set_state(state["generator"])
        self.curve = list(state["curve"])
        self.reward_tally().load(state["reward_tally"], self.examples)
        self.load_own_training_state(state)

    def own_training_state(self) -> dict:
        """A subclass's own resumable state (replay buffers, controllers, other RNGs); none by default."""
        return {}

    def load_own_training_state(self, state: dict) -> None:
        """Restore what `own_training_state` saved."""
