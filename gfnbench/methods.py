"""The method interface and registry: every row of a leaderboard is a registered method.

A method is built for one task on one language model and one seed. Training methods (GFlowNet, SFT, PPO) run
a Lightning `Trainer` inside `fit`; decoding and prompting baselines have nothing to fit. The harness only calls
`fit` and `sample`, so any method scores the same way.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from gfnbench.names import check_name
from gfnbench.settings import build, typed_overrides
from gfnbench.tasks.base import TASKS

if TYPE_CHECKING:
    import torch

    from gfnbench.models import LanguageModel
    from gfnbench.tasks.base import Example, Task
    from gfnbench.trajectories import Trajectories

METHODS: dict[str, MethodSpec] = {}


@dataclass(frozen=True)
class MethodSpec:
    name: str
    factory: Callable[..., Method]
    description: str
    tasks: tuple[str, ...] | None = None    # None: every task
    trains: bool = False                    # the factory's `trains` (Method.trains)
    opt_in: bool = False                    # applies only to tasks that list it in `opt_in_methods`
    settings: type | None = None            # the dataclass of its settings (None: it takes none)
    deterministic: bool = False             # no sampling and no training: every seed gives the same record

    def applies_to(self, task: str) -> bool:
        """Tasks choose too: `excluded_methods` drops a method, `opt_in_methods` adds an opt-in one."""
        task_cls = TASKS.get(task)
        if task_cls is not None and self.name in task_cls.excluded_methods:
            return False
        if self.opt_in:
            return task_cls is not None and self.name in task_cls.opt_in_methods
        return self.tasks is None or task in self.tasks

    def check_settings(self, overrides: dict | None) -> dict:
        """The overrides with their declared types ('3e-4' -> 0.0003); unknown keys and wrong types are refused
        here, before any work (the defaults come later, from profile and task)."""
        if not overrides:
            return {}
        if self.settings is None:
            raise ValueError(f"method {self.name} takes no settings (got {', '.join(overrides)})")
        return typed_overrides(build(self.settings, {}, overrides, self.name), overrides)


@dataclass(frozen=True)
class Budget:
    """What a trained method was given, printed in every table header so unequal budgets are visible."""

    reward_evaluations: int     # trajectories drawn for training, each worth one reward call (GFlowNet's replayed
                                # batches reuse stored rewards, so it calls the reward at most this often)
    optimizer_steps: int
    summary: str                # e.g. "240 steps x 8 samples"


@dataclass
class RunContext:
    """What a method needs besides the task and model: the profile's budget, its settings and where to log."""

    seed: int
    profile: object
    log_dir: Path | None = None
    settings: dict = field(default_factory=dict)   # the user's overrides of this method's settings
    method: str = ""                               # the registered name (for messages)
    checkpoint_dir: Path | None = None             # where training checkpoints go (None: no checkpoints)
    checkpoint_every: int = 10                     # optimizer steps between checkpoints
    resume: bool = False                           # continue from checkpoint_dir/last.ckpt when there is one


class Method:
    """A leaderboard row. Subclasses set `settings_class` (a dataclass) when they take settings, build them with
    `self.build_settings(defaults)`, and return their training budget from `budget()`."""

    trains: ClassVar[bool] = False           # it fits a model (the registry reads this: stated once, here)
    deterministic: ClassVar[bool] = False    # no sampling, no training (greedy, beam): `bench` runs one seed
    settings_class: ClassVar[type | None] = None
    resumable: ClassVar[bool] = False        # its checkpoints resume a killed run exactly (see checkpoints.py)

    def __init__(self, task: Task, lm: LanguageModel, ctx: RunContext):
        self.task, self.lm, self.ctx = task, lm, ctx

    def build_settings(self, defaults: dict):
        """The method's settings: `defaults` (from profile and task), then the user's overrides, all checked."""
        return build(self.settings_class, defaults, self.ctx.settings, self.ctx.method or type(self).__name__)

    def budget(self) -> Budget | None:
        """Reward evaluations and optimizer steps of training (None: the method does not train)."""
        return None

    def score_with_model(self, model, tokenizer, texts: list[str], ex: Example) -> dict[str, float] | None:
        """Metrics that need a model, in place of the task's `score_with_model` (None: use the task's)."""
        return None

    def fit(self) -> dict:
        """Train if the method trains; returns extra record fields (e.g. train_curve)."""
        return {}

    def sample(self, examples: list[Example], n: int, generator: torch.Generator) -> Trajectories:
        raise NotImplementedError

    def rows_per_question(self, n: int) -> int:
        """Rows `sample` returns per question when asked for n (greedy: 1). Evaluation fills a batch with
        questions up to the profile's eval_batch x n rows, so a one-row method is not run 10 rows a step."""
        return n

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

    def evaluation_modules(self) -> list[torch.nn.Module]:
        """Every network evaluation runs (the harness puts them on the run's device after training: Lightning
        hands a trained module back on the CPU)."""
        return [self.policy]

    def trained_module(self) -> torch.nn.Module | None:
        """The LightningModule `fit` trained (None: the method does not train); FSDP's shards are gathered from
        it for evaluation (devices.full_parameters)."""
        return None


def register_method(name: str, description: str, tasks: tuple[str, ...] | None = None, opt_in: bool = False,
                    settings: type | None = None):
    """Class (or factory) decorator. What a Method class states about itself (`trains`, `deterministic`,
    `settings_class`) is read from it, so no registration repeats it; `settings` is for a plain factory."""
    check_name(name, "method")   # it names the run's folder: one safe path component
    def wrap(factory):
        if name in METHODS and METHODS[name].factory is not factory:
            raise ValueError(f"method {name!r} is registered twice ({METHODS[name].factory.__module__} and "
                             f"{factory.__module__})")
        declared = settings or getattr(factory, "settings_class", None)
        METHODS[name] = MethodSpec(name, factory, description, tasks, bool(getattr(factory, "trains", False)),
                                   opt_in, declared, bool(getattr(factory, "deterministic", False)))
        return factory
    return wrap
