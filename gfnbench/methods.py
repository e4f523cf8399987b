"""The method interface and registry: every row of a leaderboard is a registered method.

A method is built for one task on one language model and one seed. Training methods (GFlowNet, SFT, PPO) run
a Lightning `Trainer` inside `fit`; decoding and prompting baselines have nothing to fit. The harness only calls
`fit` and `sample`, so any method scores the same way; what a method spends (`spending()`) and whether its
samples have an exact distribution (`exact_sampler()`) are declared here, never guessed by the harness.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
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
    from gfnbench.warm_start import WarmStart

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
    preset: tuple[tuple[str, object], ...] = ()   # settings a derived row fixes (register_variant)
    applies: Callable[[str], bool] | None = None  # a derived row's own rule, in place of tasks and opt_in
    named_only: bool = False                # left out of `bench`'s default rows: it runs when --methods names it
    variant_of: str | None = None           # a derived row's base row (register_variant)

    def applies_to(self, task: str) -> bool:
        """Tasks choose too: `excluded_methods` drops a method, `opt_in_methods` adds an opt-in one."""
        task_cls = TASKS.get(task)
        if task_cls is not None and self.name in task_cls.excluded_methods:
            return False
        if self.applies is not None:
            return self.applies(task)
        if self.opt_in:
            return task_cls is not None and self.name in task_cls.opt_in_methods
        return self.tasks is None or task in self.tasks

    def check_settings(self, overrides: dict | None) -> dict:
        """The overrides with their declared types ('3e-4' -> 0.0003); unknown keys and wrong types are refused
        here, before any work (the defaults come later, from profile and task). A derived row's preset is part of
        them (so its record says it), and an override may not contradict it."""
        overrides = {**dict(self.preset), **self.check_preset(overrides or {})}
        if not overrides:
            return {}
        if self.settings is None:
            raise ValueError(f"method {self.name} takes no settings (got {', '.join(overrides)})")
        return typed_overrides(build(self.settings, {}, overrides, self.name), overrides)

    def check_preset(self, overrides: dict) -> dict:
        for key, value in self.preset:
            if key in overrides and overrides[key] != value:
                raise ValueError(f"method {self.name} fixes {key}={value!r} (got {overrides[key]!r})")
        return overrides


@dataclass(frozen=True)
class Budget:
    """What a method was given and what it spent, printed in every table header so unequal budgets are visible.

    `reward_evaluations`, `optimizer_steps` and `summary` are the plan a trained row's `budget()` states; the other
    fields are counted while the method runs (`Method.spending()` fills them in)."""

    reward_evaluations: int     # planned: trajectories drawn for training, each worth one reward call (GFlowNet's
                                # replayed batches reuse stored rewards, so it calls the reward at most this often)
    optimizer_steps: int
    summary: str                # e.g. "240 steps x 8 samples"
    reward_calls: int = 0       # counted: trajectories the task's reward scored while training (buffer seeds too)
    test_reward_calls: int = 0  # counted: trajectories the reward scored at evaluation (best-of-n)
    labelled_items: int = 0     # distinct labelled examples read (the union over labelled_detail)
    labelled_detail: dict = field(default_factory=dict)   # e.g. {"train_gold": 10, "val_gold": 50}


def labelled_counts(uses: dict[str, Iterable]) -> tuple[int, dict[str, int]]:
    """(distinct labelled examples over every use, {use: distinct examples}); uses that read none are left out.
    An example read twice (a seeded gold target that is also a demonstration) counts once in the total."""
    sets = {use: set(examples) for use, examples in uses.items()}
    sets = {use: found for use, found in sets.items() if found}
    return len(set().union(*sets.values())), {use: len(found) for use, found in sets.items()}


@dataclass(frozen=True)
class ExactSampler:
    """A method's declaration that every sample it returns is a plain ancestral sample of `network` at
    `temperature` from `Method.prompt_for(ex)`, with the task's mask, stop, lengths and tool."""

    network: torch.nn.Module
    temperature: float


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
    warm_start: WarmStart | None = None            # the SFT run a row with `init: sft` starts from (runner)


class Method:
    """A leaderboard row: the whole contract a method file implements (docs/contributing.md#adding-a-method).

    - `sample(examples, n, generator)` returns one `Trajectories` (gfnbench/trajectories.py) holding n rows per
      example (or `rows_per_question(n)`), row b answering `examples[traj.group[b]]`. Build one with the shared
      sampler (`policy.sample_task`), which applies the task's mask, stop, lengths and tool; keep some rows of a
      batch with `traj.select(index)` (groups are kept); attach rewards with `traj.with_log_reward(r)`.
    - The base model is `self.lm.model` (tokenizer `self.lm.tokenizer`); a LoRA policy reaches it with
      `models.adapters_off(policy)`. `policy` is the network evaluation scores and moves to the run's device.
    - Exact metrics (rng's `tv_exact`, ...) enumerate a distribution, so they are reported only when the method
      declares, with `exact_sampler()`, which network at which temperature its samples are ancestral samples
      of. Undeclared (the default), or when a subclass overrides `sample` below the class that declared it,
      they are "n/a" with `exact_na_reason` in the record's `metrics_na`, never another model's numbers.
    - Budget: a trained row states its plan in `budget()`; reward calls are counted where the reward is called
      (`policy.sample_scored`, `spending.score_at_test` for test-time scoring such as best-of-n), labelled
      examples by `labelled_examples()`, and `spending()` is what the record keeps.

    Subclasses set `settings_class` (a dataclass) when they take settings and build them with
    `self.build_settings(defaults)`."""

    trains: ClassVar[bool] = False           # it fits a model (the registry reads this: stated once, here)
    deterministic: ClassVar[bool] = False    # no sampling, no training (greedy, beam): `bench` runs one seed
    settings_class: ClassVar[type | None] = None
    resumable: ClassVar[bool] = False        # its checkpoints resume a killed run exactly (see checkpoints.py)
    exact_na_reason: ClassVar[str] = ("the method does not declare that its samples are ancestral samples of one "
                                      "network (Method.exact_sampler)")

    test_reward_calls: int = 0               # spending.score_at_test counts on the instance

    def __init__(self, task: Task, lm: LanguageModel, ctx: RunContext):
        self.task, self.lm, self.ctx = task, lm, ctx

    def build_settings(self, defaults: dict):
        """The method's settings: `defaults` (from profile and task), then the user's overrides, all checked."""
        return build(self.settings_class, defaults, self.ctx.settings, self.ctx.method or type(self).__name__)

    def budget(self) -> Budget | None:
        """The training plan: reward evaluations and optimizer steps (None: the method does not train)."""
        return None

    def reward_calls(self) -> int:
        """Reward calls made while training, over every process (trained rows count them; 0 otherwise)."""
        return 0

    def labelled_examples(self) -> dict[str, list[Example]]:
        """The labelled examples the method read, by use: "train_gold" (gold targets or labels trained on),
        "val_gold" (gold read to select or early-stop), "seeded" (gold-derived trajectories put in a buffer),
        "demonstrations" (few-shot examples in its prompts), "reward_labels" (on a label task, the training
        examples whose gold label the reward read). None by default."""
        return {}

    def spending(self) -> Budget | None:
        """The record's budget: `budget()` with the counted reward calls and labelled examples. A method that does
        not train but reads labels or calls the reward at test time gets a budget with no steps; one that spends
        nothing gets None."""
        total, detail = labelled_counts(self.labelled_examples())
        plan = self.budget()
        if plan is None and not total and not self.test_reward_calls:
            return None
        plan = plan or Budget(0, 0, untrained_summary(detail, self.test_reward_calls))
        return replace(plan, reward_calls=self.reward_calls(), test_reward_calls=self.test_reward_calls,
                       labelled_items=total, labelled_detail=detail)

    def score_with_model(self, model, tokenizer, texts: list[str], ex: Example) -> dict[str, float] | None:
        """Metrics that need a model, in place of the task's `score_with_model` (None: use the task's)."""
        return None

    def fit(self) -> dict:
        """Train if the method trains; returns extra record fields (e.g. train_curve)."""
        return {}

    def sample(self, examples: list[Example], n: int, generator: torch.Generator) -> Trajectories:
        """n rows per example (see the class doc), drawn from `generator` so a seed gives the same samples."""
        raise NotImplementedError

    def rows_per_question(self, n: int) -> int:
        """Rows `sample` returns per question when asked for n (greedy: 1). Evaluation fills a batch with
        questions up to the profile's eval_batch x n rows, so a one-row method is not run 10 rows a step."""
        return n

    def config(self) -> dict:
        return {}

    def prompt_for(self, ex: Example) -> str:
        return self.task.prompt(ex)

    def exact_sampler(self) -> ExactSampler | None:
        """The network and temperature whose plain ancestral sampling from `prompt_for(ex)` gives every sample
        `sample` returns (enables exact metrics). None, the default: not declared (see `exact_na_reason`)."""
        return None

    @property
    def exact_temperature(self) -> float | None:
        """The declared exact sampler's temperature (None: not declared)."""
        declared = self.exact_sampler()
        return None if declared is None else declared.temperature

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


def untrained_summary(detail: dict[str, int], test_reward_calls: int) -> str:
    """The budget line of a row that trains nothing but reads labels or scores at test time."""
    parts = ["no training"] + [f"{count} {use.replace('_', ' ')}" for use, count in detail.items()]
    if test_reward_calls:
        parts.append(f"{test_reward_calls} test-time reward calls")
    return ", ".join(parts)


def declared_exact_sampler(method: Method) -> tuple[ExactSampler | None, str]:
    """(the method's exact sampler, "") or (None, why exact metrics are n/a). A declaration holds only for the
    `sample` it was written beside: a subclass that overrides `sample` below the declaring class (a best-of-n
    built on a trained row) is undeclared until it declares again."""
    mro = type(method).__mro__
    declarer = next(c for c in mro if "exact_sampler" in vars(c))
    sampler = next((c for c in mro if "sample" in vars(c)), Method)
    if sampler is not declarer and issubclass(sampler, declarer) and declarer is not Method:
        return None, (f"{type(method).__name__} overrides sample() below {declarer.__name__}, which declared the "
                      f"exact sampler; declare exact_sampler() beside the new sample() if it still draws "
                      f"ancestral samples of one network")
    declared = method.exact_sampler()
    return declared, "" if declared is not None else method.exact_na_reason


def register_variant(name: str, base: str, description: str, preset: dict, applies: Callable[[str], bool]) -> None:
    """A row that is the registered row `base` with some settings fixed (`preset`), under a name of its own for
    tables, applying where `applies` says, run only when named (see warm_start.py)."""
    check_name(name, "method")
    if name in METHODS:
        raise ValueError(f"method {name!r} is registered twice")
    METHODS[name] = replace(METHODS[base], name=name, description=description, preset=tuple(preset.items()),
                            applies=applies, named_only=True, variant_of=base)


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
