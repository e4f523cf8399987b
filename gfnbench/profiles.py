"""Run profiles: how big a benchmark run is. `smoke` for tests and CI, `cpu` for `make bench`, `paper` for GPUs.

Profiles are data: `--profile my.yaml` names a YAML file whose fields override those of a built-in base profile
(`base: cpu`, the default), and `--train_steps` / `--eval_questions` / `--logger` override single fields. A profile
whose numbers differ from its base's is named after the difference ("cpu (train_steps 5)"), so every record and
table header says what was run; where its runs go is `gfnbench.results_key`'s job.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

LOGGERS = ("csv", "tensorboard", "wandb")


@dataclass(frozen=True)
class Profile:
    name: str
    model: str
    eval_questions: int | None      # per evaluation split; None = all
    eval_samples: int | None        # per question; None = the task's own (paper: 10)
    eval_batch: int                 # questions sampled together
    train_steps: int                # optimizer steps for training methods
    prompts_per_step: int           # prompts accumulated into one optimizer step
    samples_per_prompt: int         # trajectories per prompt (GFlowNet / PPO batch)
    lora_rank: int
    lora_alpha: int
    learning_rate: float
    results_dir: str                # the folder of this profile's default runs (results_key adds the rest)
    skip_costly: bool = False       # `bench` leaves out each task's `costly_methods` unless --methods names them
    task_eval_floor: bool = False   # raise eval_questions to a task's `min_eval_questions` (smoke stays tiny)
    bench_jobs: int | None = 1      # runs side by side in `bench`; None: one per core (up to 4) on a CPU
    # where it computes (gfnbench/devices.py; `--accelerator` etc. override these for one run or bench)
    accelerator: str = "cpu"        # auto, cpu or gpu
    devices: int = 1                # processes, one per device (DDP/FSDP when > 1)
    strategy: str = "auto"          # auto (one device), ddp or fsdp
    # 32-true (alias 32), bf16-true (bf16 base weights, fp32 LoRA/heads/log-probs), bf16-mixed (training under
    # autocast) or auto (bf16-true on AMX CPUs and bf16 GPUs); see precision.py. Every profile stays 32-true, so
    # `gfnbench` without --precision reproduces the fp32 tables anywhere; `make bench` passes PRECISION (auto).
    precision: str = "32-true"
    logger: str = "csv"             # training logs: csv (always written), tensorboard or wandb beside it
    curve_points: int | None = None  # learning-curve probes per trained run; None: the task's own (arith 4, rng 8)
    base: str | None = None         # the built-in profile this one overrides (None: it is one)

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES = {
    "smoke": Profile("smoke", model="tiny", eval_questions=3, eval_samples=4, eval_batch=3, train_steps=3,
                     prompts_per_step=1, samples_per_prompt=4, lora_rank=4, lora_alpha=8, learning_rate=1e-3,
                     results_dir="results/smoke"),
    "cpu": Profile("cpu", model="embedded", eval_questions=100, eval_samples=None, eval_batch=10, train_steps=40,
                   prompts_per_step=1, samples_per_prompt=8, lora_rank=16, lora_alpha=16, learning_rate=1e-4,
                   results_dir="results", skip_costly=True, task_eval_floor=True, bench_jobs=None),
    "paper": Profile("paper", model="EleutherAI/gpt-j-6b", eval_questions=None, eval_samples=None, eval_batch=16,
                     train_steps=2000, prompts_per_step=32, samples_per_prompt=16, lora_rank=64, lora_alpha=16,
                     learning_rate=1e-4, results_dir="results/paper", accelerator="auto"),   # a GPU when torch sees one
}

# the fields whose values change a run's numbers (model and precision aside: results_key keys those on their own)
NUMBER_FIELDS = ("eval_questions", "eval_samples", "eval_batch", "train_steps", "prompts_per_step",
                 "samples_per_prompt", "lora_rank", "lora_alpha", "learning_rate", "task_eval_floor", "curve_points")
FIXED_FIELDS = ("name", "base", "results_dir")    # derived, never set by a profile file or flag
COUNT_FIELDS = ("eval_batch", "train_steps", "prompts_per_step", "samples_per_prompt", "lora_rank", "lora_alpha",
                "devices")


def get_profile(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILES)} "
                         f"(or a profile .yaml file)")
    return PROFILES[name]


def base_profile(prof: Profile) -> Profile:
    """The built-in profile `prof` was made from (itself when it is one; a hand-built one counts as its own)."""
    return PROFILES.get(prof.base or prof.name, prof)


def is_profile_file(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml"))


def resolve_profile(spec: str | Profile, **overrides) -> Profile:
    """The profile a run uses: a built-in name, a YAML file (its fields over its `base`), or a Profile already
    resolved; then the given `overrides` (None values ignored: a flag not passed), checked and named."""
    if isinstance(spec, Profile):
        prof = spec
    elif isinstance(spec, str) and is_profile_file(spec):
        prof = read_profile_file(spec)
    elif isinstance(spec, str):
        prof = get_profile(spec)
    else:
        raise ValueError(f"--profile must be a profile name or a .yaml file, got {spec!r}")
    given = {k: v for k, v in overrides.items() if v is not None}
    return with_overrides(prof, given) if given else prof


def read_profile_file(path: str) -> Profile:
    """A profile YAML: `base: cpu` (the default) and any of the profile's fields, e.g. `train_steps: 5`."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as err:
        raise ValueError(f"profile file {path}: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"profile file {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"profile file {path} must map profile fields to values, e.g. 'base: cpu' and "
                         f"'train_steps: 5'")
    data = dict(data)
    base = data.pop("base", "cpu")
    if not isinstance(base, str) or base not in PROFILES:
        raise ValueError(f"profile file {path}: base must be one of {', '.join(PROFILES)}, got {base!r}")
    return with_overrides(PROFILES[base], data, path)


def with_overrides(prof: Profile, overrides: dict, path: str | None = None) -> Profile:
    """`prof` with `overrides` (each coerced to its field's type and checked; from the profile file `path`, or
    from flags when None), named after its base and the numbers that differ from it."""
    from gfnbench.settings import coerce, field_types

    types = field_types(Profile)
    settable = [f for f in types if f not in FIXED_FIELDS]
    where = (lambda key, raw: f"profile file {path}: {key}: {raw!r}") if path else (lambda key, raw: f"--{key} {raw}")
    unknown = sorted(set(overrides) - set(settable))
    if unknown:
        raise ValueError(f"{f'profile file {path}' if path else 'profile flags'}: {', '.join(map(repr, unknown))}: "
                         f"not a profile field that can be set; fields: {', '.join(settable)}")
    values = {}
    for key, raw in overrides.items():
        try:
            values[key] = coerce(raw, types[key])
        except TypeError as err:
            raise ValueError(f"{where(key, raw)}: {err}") from None
        problem = value_problem(key, values[key])
        if problem:
            raise ValueError(f"{where(key, raw)}: {problem}")
    base = base_profile(prof)
    changed = replace(prof, **values)
    return replace(changed, name=derived_name(changed, base), base=base.name)


def value_problem(field: str, value) -> str | None:
    """Why `value` cannot be this profile field's (None when it can)."""
    if field in COUNT_FIELDS and value < 1:
        return "must be at least 1"
    if field in ("eval_questions", "eval_samples", "bench_jobs", "curve_points") and value is not None and value < 1:
        return ("must be at least 1 (or null: all questions / the task's own samples / one job per core / the "
                "task's own probes)")
    if field == "learning_rate" and not value > 0:
        return "must be > 0"
    if field == "logger" and value not in LOGGERS:
        return f"must be one of {', '.join(LOGGERS)}"
    return None


def number_changes(prof: Profile, base: Profile) -> dict:
    """The fields, of those that change a run's numbers, where `prof` differs from `base` (in field order)."""
    return {f: getattr(prof, f) for f in NUMBER_FIELDS if getattr(prof, f) != getattr(base, f)}


def derived_name(prof: Profile, base: Profile) -> str:
    """'cpu' when the numbers are the base's, else 'cpu (train_steps 5, eval_questions 10)'."""
    changes = number_changes(prof, base)
    if not changes:
        return base.name
    return f"{base.name} ({', '.join(f'{k} {v}' for k, v in changes.items())})"
