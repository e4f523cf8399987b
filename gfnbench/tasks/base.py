"""The task interface (the whole protocol a task may implement) and its registry.

A task says what the policy is asked (`prompt`), what it may write (`allowed_tokens`, lengths, stop, `tool`),
how good a finished or partial answer is (`log_reward`, for every prefix), and how answers are scored
(`score`). Everything else (sampling, training, evaluation, tables) is shared and never changes per task.

Conventions every hook follows:
- Lengths count actions: tokens the policy chose. Stopping is an action but adds no token; tokens a tool
  inserts are state, not actions. A trajectory with n actions has n+1 states s_0 (the prompt) ... s_n.
- Splits: `eval_splits` are scored; methods that train also read "train" (GFlowNet/PPO prompts, SFT targets)
  and `val_split` (SFT early stopping), so a task that trains needs all three.
- Build test batches with `gfnbench.trajectories.make_trajectories(...)` (keywords, shape-checked).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor

from gfnbench.names import check_name
from gfnbench.sampling.config import SamplingConfig

TASKS: dict[str, type[Task]] = {}


@dataclass(frozen=True)
class Example:
    id: str
    question: str
    answer: str
    rationale: str | None = None     # gold latent (CoT / middle sentence) where the task has one
    meta: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class TrainingDefaults:
    """Per-task GFlowNet settings (docs/paper.md#reward-temperature and #exploration)."""

    reward_temperature: tuple[float, float, int] = (1.0, 1.0, 0)   # start, end, horizon in optimizer steps
    behaviour_mix: tuple[float, float, float] = (0.25, 0.5, 0.25)  # on-policy, tempered U[0.5, 2], replay
    buffer_capacity: int = 50
    buffer_sampling: str = "reward"
    steps_multiplier: float = 1.0     # train this task for profile.train_steps * multiplier steps
    dedup_tol: float = 0.25           # replay buffer: relative edit distance below which samples are duplicates
    anneal_within_budget: bool = False  # end the temperature ramp by the last step when a run is shorter
    learning_rate: float | None = None  # GFlowNet lr for this task (None: the profile's)
    decay_to: float = 1.0             # GFlowNet lr multiplier at the last step (1: constant after warm-up)


class Task(ABC):
    """Subclass, decorate with `@register_task("name")` and implement the four abstract methods; every other hook
    has a default that suits a task without it."""

    name: ClassVar[str]
    version: ClassVar[str] = "1"          # bump when prompts, rewards or metrics change; recorded in every run
    description: ClassVar[str] = ""
    data_source: ClassVar[str] = ""
    builtin_data: ClassVar[Path | None] = None   # the shipped file or folder read when no --data is given
    eval_splits: ClassVar[tuple[str, ...]] = ("test",)
    val_split: ClassVar[str] = "val"
    min_len: ClassVar[int] = 1            # actions before the stop action is allowed
    max_len: ClassVar[int] = 20           # actions in training; the stop is forced after this many
    eval_max_len: ClassVar[int] = 20      # actions at evaluation
    default_shots: ClassVar[int] = 0      # demonstrations in the decoding baselines' prompt
    eval_temperature: ClassVar[float] = 1.0
    eval_samples: ClassVar[int] = 10      # samples per question at evaluation (a profile may override)
    training: ClassVar[TrainingDefaults] = TrainingDefaults()
    report_logp_ref_max: ClassVar[bool] = False    # also report the best sample's logp_ref (continuation, §2.6)
    excluded_methods: ClassVar[tuple[str, ...]] = ()   # registered methods that make no sense for this task
    opt_in_methods: ClassVar[tuple[str, ...]] = ()     # opt-in methods (e.g. "tempered") this task wants
    # Evaluate at least this many questions per split on profiles that cap fewer (cpu), for tasks whose metric is
    # too coarse on a handful of questions and whose evaluation is cheap (subj's accuracy).
    min_eval_questions: ClassVar[int] = 0
    # Methods the cpu profile's `bench` leaves out unless named with --methods (too slow for its time limit).
    costly_methods: ClassVar[tuple[str, ...]] = ()
    # Rows that run only when named elsewhere (the SFT-started rows, warm_start.py) but are in this task's default
    # `bench`: where the table's question needs them (arith: does GFlowNet fine-tuning from SFT beat SFT?).
    bench_variants: ClassVar[tuple[str, ...]] = ()
    # The table's standing questions, (A, B): `bench` writes the paired comparison A - B per question
    # (<task>_paired_<A>_vs_<B>.md, gfnbench/paired.py) when it ran both rows; `gfnbench compare` asks any other.
    paired_comparisons: ClassVar[tuple[tuple[str, str], ...]] = ()
    # "higher" or "lower" (is better) per metric, shown in every table heading; metrics not listed fall back to
    # the harness's defaults (cells.DEFAULT_DIRECTIONS).
    metric_directions: ClassVar[dict[str, str]] = {}
    metric_info: ClassVar[dict[str, str]] = {}     # one-line explanations of metrics, kept in run records
    # Metric -> the samples.jsonl field (from `sample_fields`) it compares each sample with, kept in run records;
    # metrics not listed read the samples alone (diversity, valid) or the task's target (rng).
    scored_against: ClassVar[dict[str, str]] = {}
    # The wide table's columns, in order (human names in gfnbench/labels.py); empty: every metric with a direction.
    headline_metrics: ClassVar[tuple[str, ...]] = ()
    curve_points: ClassVar[int] = 0     # learning-curve probes per training run (0: the task has no cheap probe)
    data_kind: ClassVar[str | None] = None   # what `--data` must be: "file", "folder" (None: the task reads none)

    @abstractmethod
    def examples(self, split: str) -> list[Example]:
        """Deterministic list of examples; unknown split -> ValueError listing the known ones."""

    @abstractmethod
    def prompt(self, ex: Example) -> str:
        """The policy's prompt (what GFlowNet/SFT/PPO condition on)."""

    @abstractmethod
    def log_reward(self, model, tokenizer, traj, examples: list[Example]) -> Tensor:
        """[B, L+1] untempered log R(s_j -> stop) for every prefix state j = 0..L of each row, under `model` (the
        base LM: the caller disables adapters). Row b belongs to `examples[traj.group[b]]`.

        Rules (checked by the trainers): -inf means zero reward (an invalid answer, or a prefix shorter than
        `min_len`, where the sampler cannot stop); never NaN or +inf. Entries past a row's length
        (j > traj.lengths[b]) are ignored but must not be NaN (0 is the convention).
        `sampling.context_suffix_log_reward` builds the usual shape, log p(prefix, suffix | context)."""

    @abstractmethod
    def score(self, texts: list[str], ex: Example) -> dict[str, float]:
        """Metrics of the n samples drawn for one example; the harness averages them over examples."""

    def sample_fields(self, ex: Example) -> dict[str, str]:
        """What samples.jsonl keeps beside each sample: every field a metric is scored against, named as
        `scored_against` names it, so that a reader can re-check a cell from the samples alone."""
        return {"answer": ex.answer} if ex.answer else {}

    def score_with_model(self, model, tokenizer, texts: list[str], ex: Example) -> dict[str, float]:
        """Metrics that need a model (subj: the label the base LM reads after each rationale); `model` is the base
        LM, adapters off. A method may replace it (see `Method.score_with_model`)."""
        return {}

    def exact_metrics(self, model, tokenizer, prompt: str, temperature: float) -> dict[str, float] | None:
        """Distances of the policy's exact distribution to the target, for tasks whose support can be enumerated
        (rng). None: the task has none."""
        return None

    def exact_outcomes(self, model, tokenizer, prompt: str, temperature: float) -> dict[str, float] | None:
        """The policy's exact probability of every outcome the exact metrics compare (rng: each integer and
        "<invalid>"), kept in the run record so the metrics can be re-checked without the model. None: none."""
        return None

    def prompt_weights(self, examples: list[Example]) -> list[float] | None:
        """Relative chances of the training examples being drawn as prompts (None: uniform). Trained methods all
        draw their prompts this way, so a reweighting never favours one method."""
        return None

    def split_names(self) -> tuple[str, ...]:
        """Every split the task has (checked against the model's context before a run starts)."""
        return tuple(dict.fromkeys(("train", self.val_split, *self.eval_splits)))

    def demonstration(self, ex: Example) -> str:
        raise NotImplementedError(f"task {self.name} has no demonstrations for few-shot prompts")

    def demonstrations(self) -> list[Example]:
        return []

    def shots_prompt(self, ex: Example, k: int) -> str:
        """k worked examples, one per line, then the prompt: the few-shot prompting baseline."""
        demos = self.demonstrations()
        if k > len(demos):
            raise ValueError(f"task {self.name} has {len(demos)} demonstrations, {k} shots asked")
        return "".join(self.demonstration(d) + "\n" for d in demos[:k]) + self.prompt(ex)

    def target(self, ex: Example) -> str | None:
        """Gold continuation for SFT and buffer seeding (None where the task has none)."""
        return None

    def stop_id(self, tokenizer) -> int:
        return int(tokenizer.eos_token_id)

    def allowed_tokens(self, tokenizer) -> Tensor | None:
        """[V] bool mask of tokens the policy may write (the stop token included); None: all of them."""
        return None

    def tool(self, state_text: str) -> str | None:
        """Text to insert after the state `state_text` (not an action), or None. Tasks without a tool keep this."""
        return None

    @property
    def has_tool(self) -> bool:
        return type(self).tool is not Task.tool

    def buffer_seeds(self, model, tokenizer, ex: Example, generator: torch.Generator | None = None) -> list[str]:
        """Extra replay-buffer seeds for one training example besides its gold target, e.g. drawn from the base
        model (`model`, adapters off) under a helpful prompt; each must be a valid trajectory's text."""
        return []

    def curve_metrics(self, policy, tokenizer) -> dict[str, float]:
        """A cheap metric of the policy as it trains (e.g. rng's exact TV), drawn as a learning curve."""
        return {}

    def config(self) -> dict:
        """Task settings worth keeping in the run record beyond its class name (read after training)."""
        return {}

    def sampling(self, *, train: bool, temperature: float | None = None, **kw) -> SamplingConfig:
        return SamplingConfig(temperature=temperature or (1.0 if train else self.eval_temperature),
                              min_len=self.min_len, max_len=self.max_len if train else self.eval_max_len, **kw)


class LabelledClassification(Task):
    """A classification task whose answer is one of `labels`, reached through a latent rationale (subj).

    Its prompting and SFT rows are direct classifiers (the paper's): they read the label the LM prefers after
    `classifier_prompt`, through `prompted_classifier`, instead of sampling a rationale."""

    labels: ClassVar[tuple[str, ...]] = ()
    few_shot_k: ClassVar[int | None] = None    # shots of the few_shot row (None: shots.FEW_SHOT_K)

    @abstractmethod
    def label_suffix(self, label: str) -> str:
        """The text that states `label` after a rationale (the reward's fixed suffix Y)."""

    @abstractmethod
    def classifier_prompt(self, ex: Example, k: int) -> str:
        """k labelled demonstrations, then the question, ending where the label's text begins."""

    @abstractmethod
    def prompted_classifier(self, lm, examples: list[Example], k: int):
        """One trajectory per example whose text is the label `lm` prefers after the k-shot classifier prompt."""


def token_mask(tokenizer, keep) -> Tensor:
    """[V] bool of tokens whose decoded text passes `keep`; the stop token is added by the caller."""
    texts = _decoded_vocab(tokenizer)
    return torch.tensor([keep(t) for t in texts], dtype=torch.bool, device="cpu")   # moved where it is used


@lru_cache(maxsize=8)
def _decoded_vocab(tokenizer) -> tuple[str, ...]:
    """Each token's text, once per tokenizer (49k decodes take ~1 s)."""
    return tuple(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))


def register_task(name: str):
    check_name(name, "task")   # it names the task's folder and table files: one safe path component
    def wrap(cls: type[Task]) -> type[Task]:
        if name in TASKS and TASKS[name] is not cls:
            raise ValueError(f"task {name!r} is registered twice ({TASKS[name].__module__} and {cls.__module__})")
        cls.name = name
        TASKS[name] = cls
        return cls
    return wrap
