"""What preflight hands to a run or a bench: its inputs resolved and checked once, so nothing after re-checks them.

Plans are built only by `gfnbench.preflight.check_run` and `check_bench`; the runner and the bench trust them.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gfnbench.methods import MethodSpec
    from gfnbench.profiles import Profile
    from gfnbench.tasks.base import Task


@dataclass(frozen=True)
class RunPlan:
    """One run: the task as built (its data read), the method as registered, its checked settings."""

    task: Task
    spec: MethodSpec
    seed: int
    profile: Profile          # with the run's compute settings (accelerator, devices, ...) applied
    settings: dict            # this method's overrides, typed (the record keeps them as they are)
    root: Path                # the results folder (not created by preflight)
    model: str                # the model to load: --model, else the profile's
    data: str | None = None   # the task's --data path, as given

    @property
    def method(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class BenchPlan:
    """A bench: its methods in table order, seeds and each method's checked settings. Each run gets a task of its
    own from `new_task` (a task may keep state within a run, e.g. infill_tuned's fine-tuned reward model)."""

    task: Task                        # the task preflight built and checked
    new_task: Callable[[], Task]      # the same task built afresh, for one run
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...]
    profile: Profile
    settings: dict                    # {method name: its typed overrides}
    root: Path
    model: str
    data: str | None = None

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.methods]

    def for_run(self, spec: MethodSpec, seed: int) -> RunPlan:
        return RunPlan(self.new_task(), spec, seed, self.profile, self.settings[spec.name], self.root, self.model,
                       self.data)
