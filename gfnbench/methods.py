"""The method interface and registry: every row of a leaderboard is a registered method.

A method is built for one task on one language model and one seed. Training methods (GFlowNet, SFT, PPO) run
a Lightning `Trainer` inside `fit`; decoding and prompting baselines have nothing to fit. The harness only calls
`fit` and `sample`, so any method scores the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gfnbench.models import LanguageModel
from gfnbench.tasks.base import Example, Task
from gfnbench.trajectories import Trajectories

METHODS: dict[str, "MethodSpec"] = {}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    factory: Callable[..., "Method"]
    description: str
    tasks: tuple[str, ...] | None = None    # None: every task
    trains: bool = False
    opt_in: bool = False                    # applies only to tasks that list it in `opt_in_methods`

    def applies_to(self, task: str) -> bool:
        """Tasks choose too: `excluded_methods` drops a method, `opt_in_methods` adds an opt-in one."""
        from gfnbench.tasks.base import TASKS

        task_cls = TASKS.get(task)
        if self.name in getattr(task_cls, "excluded_methods", ()):
            return False
        if self.opt_in:
            return self.name in getattr(task_cls, "opt_in_methods", ())
        return self.tasks is None or task in self.tasks


@dataclass
class RunContext:
    """What a method needs besides the task and model: the profile's budget and where to log."""

    seed: int
    profile: object
    log_dir: Path | None = None
    hparams: dict = field(default_factory=dict)


class Method:
    trains = False

    def __init__(self, task: Task, lm: LanguageModel, ctx: RunContext):
        self.task, self.lm, self.ctx = task, lm, ctx

    def fit(self) -> dict:
        """Train if the method trains; returns extra record fields (e.g. train_curve)."""
        return {}

    def sample(self, examples: list[Example], n: int, generator: torch.Generator) -> Trajectories:
        raise NotImplementedError

    def config(self) -> dict:
        return {}

    def prompt_for(self, ex: Example) -> str:
        return self.task.prompt(ex)

    @property
    def exact_temperature(self) -> float | None:
        """Temperature of plain ancestral sampling, if that is how the method samples (enables exact metrics)."""
        return self.task.eval_temperature

    @property
    def policy(self) -> torch.nn.Module:
        """The network that samples (for its own likelihood); the base model for untrained methods."""
        return self.lm.model


def cpu_trainer(ctx: RunContext, **settings):
    """The Lightning Trainer every trained method uses: CPU, CSV logs in the run's train/ folder (when it has
    one), every step logged, no checkpoints or sanity validation; `settings` add the method's own."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(str(ctx.log_dir), name="", version="") if ctx.log_dir else False
    return L.Trainer(accelerator="cpu", devices=1, logger=logger, enable_checkpointing=False,
                     enable_model_summary=False, num_sanity_val_steps=0, deterministic=False, log_every_n_steps=1,
                     **settings)


def register_method(name: str, description: str, tasks: tuple[str, ...] | None = None, trains: bool = False,
                    opt_in: bool = False):
    def wrap(factory):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = MethodSpec(name, factory, description, tasks, trains, opt_in)
        return factory
    return wrap


def _register_all() -> None:
    import gfnbench.baselines  # noqa: F401  (importing registers)
    import gfnbench.gflownet  # noqa: F401


def get_method(name: str) -> MethodSpec:
    _register_all()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


def all_methods() -> dict[str, MethodSpec]:
    _register_all()
    return dict(METHODS)


def methods_for(task: str) -> list[str]:
    _register_all()
    return [m for m, spec in METHODS.items() if spec.applies_to(task)]
