"""Everything a run or a bench needs, checked before any folder is created or any model weight is loaded.

Checked, in this order: profile, task (a task file's syntax and import errors as one `file:line` line), data path
(exists, a file or a folder as the task expects, UTF-8 and well-formed: the task's reader), methods (known and
applicable), seeds (non-negative, distinct integers), model (its tokenizer and config only, never the weights),
every example's prompt length against the model's context, the compute settings and the logger (the results
folder is keyed by the profile as run, see results_key), the results folder (writable, without creating it), then
each method's settings. Each failure is one ValueError (an `InputError` for the task, data, methods, seeds, model
and results folder) whose message is one line. `check_run` and `check_bench` return what they checked as a plan
(`gfnbench.plans`), which the runner and the bench carry out without checking again.
"""
from __future__ import annotations

import os
import re
import sys
from functools import partial
from pathlib import Path

from gfnbench.model_context import BytesTokenizer, gguf_tokenizer, model_tokenizer
from gfnbench.plans import BenchPlan, RunPlan
from gfnbench.usercode import user_code_error
from gfnbench.warm_start import check_init


class InputError(ValueError):
    """A user error found before any work: the CLI prints it as one `gfnbench: error:` line."""


# --------------------------------------------------------------------------- seeds, methods

def check_seeds(seeds) -> list[int]:
    seeds = list(seeds)
    if not seeds:
        raise InputError("no seeds given: pass e.g. --seeds '[0,1,2]'")
    seen = set()
    for seed in seeds:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {seed!r} (seeds {seeds})")
        if seed in seen:
            raise InputError(f"seed {seed} is listed twice (seeds {seeds})")
        seen.add(seed)
    return seeds


def check_methods(task_name: str, methods) -> list[str]:
    """The registered names of `methods` (see `method_specs`)."""
    return [spec.name for spec in method_specs(task_name, methods)]


def method_specs(task_name: str, methods) -> list:
    """Each named method's spec (a method file imported), in order: known, applicable to the task, distinct."""
    from gfnbench.catalog import get_method, methods_for

    methods = list(methods)
    if not methods:
        raise InputError(f"no methods given; methods for {task_name}: {', '.join(methods_for(task_name))}")
    specs = []
    for name in methods:
        if not isinstance(name, str):
            raise InputError(f"method names are strings, got {name!r}")
        spec = get_method(name)
        if not spec.applies_to(task_name):
            raise InputError(f"method {spec.name!r} does not apply to task {task_name!r}; "
                             f"methods for it: {', '.join(methods_for(task_name))}")
        if spec.name in [s.name for s in specs]:
            raise InputError(f"method {spec.name!r} is listed twice (methods {methods})")
        specs.append(spec)
    return specs


# --------------------------------------------------------------------------- task and data

def task_class(task: str):
    """The task's class (importing a task file), without constructing it."""
    from gfnbench.tasks import get_task_class

    try:
        return get_task_class(task)
    except InputError:
        raise
    except ValueError as err:
        raise InputError(str(err)) from None


def check_data_path(cls, data: str) -> None:
    """`data_kind` is the one answer to "does this task read --data?": None means no; otherwise the task's
    constructor takes the path."""
    if cls.data_kind is None:
        raise InputError(f"task {cls.name} does not read a data file (--data)")
    path = Path(data)
    kind = cls.data_kind
    what = {"file": "a file", "folder": "a folder"}.get(kind, "a file or folder")
    if not path.exists():
        raise InputError(f"data path {data} does not exist (task {cls.name} expects {what})")
    if kind == "file" and path.is_dir():
        raise InputError(f"data path {data} is a folder; task {cls.name} expects a file")
    if kind == "folder" and not path.is_dir():
        raise InputError(f"data path {data} is a file; task {cls.name} expects a folder")


def build_task(task: str, data: str | None):
    """The constructed task (its data read and validated by the task's own reader)."""
    cls = task_class(task)
    if data is not None:
        check_data_path(cls, data)
    return construct_task(cls, task, data)


def construct_task(cls, task: str, data: str | None):
    """`cls` built on `data` (a path its `data_kind` accepts, checked by `check_data_path`; None: no --data).
    A failure in a user's task file is one line naming its file and line."""
    kwargs = {"data": data} if data is not None else {}
    try:
        return cls(**kwargs)
    except (ValueError, OSError):
        raise
    except Exception as err:  # a user task's constructor failing: one line naming its file and line
        module_file = getattr(sys.modules.get(cls.__module__), "__file__", None) or "?"
        file = Path(task) if task.endswith(".py") else Path(module_file)
        raise InputError(f"task {cls.name} could not be built: {user_code_error(err, file)}") from err


# --------------------------------------------------------------------------- every example against the context

def _splits(task) -> dict[str, list]:
    names = task.split_names()
    out = {}
    for name in names:
        try:
            out[name] = task.examples(name)
        except (ValueError, KeyError):
            continue
    return out


def locate(ex, data: str | None, split: str) -> str:
    """Where an example came from: `file, line n` when it can be told, else its id and split."""
    if data:
        path = Path(data)
        m = re.fullmatch(r"(?:.*@)?line(\d+)", ex.id)
        if m and path.is_file():
            return f"{data}, line {m.group(1)}"
        m = re.fullmatch(r"(obj|sub)(\d+)", ex.id)
        if m and path.is_dir():
            try:
                from gfnbench.tasks.subj import FILES
                name = FILES["objective" if m.group(1) == "obj" else "subjective"]
                return f"{path / name}, line {m.group(2)}"
            except (ImportError, KeyError):
                pass
        if path.is_file():
            probe = ex.question[:40]
            try:
                for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                    if line.startswith(ex.id + ",") or (probe and probe in " ".join(line.split())):
                        return f"{data}, line {number}"
            except (OSError, UnicodeDecodeError):
                pass
    return f"example {ex.id!r} (split {split})"


def _shots_prefix(task, methods, first, tokenizer) -> tuple[int, str]:
    """(tokens, what) of the longest demonstration prefix any of `methods` puts before a prompt."""
    from functools import partial

    from gfnbench.shots import few_shot_k, shots_prompt

    best, what = 0, ""
    plain = len(tokenizer(task.prompt(first))["input_ids"])
    for name in methods:
        if name == "few_shot":
            k, build = few_shot_k(task), partial(shots_prompt, task)
        elif name == "zero_shot":
            continue
        else:
            k, build = task.default_shots, task.shots_prompt
        if not k:
            continue
        try:
            extra = len(tokenizer(build(first, k))["input_ids"]) - plain
        except (NotImplementedError, ValueError, AttributeError):
            continue
        if extra > best:
            best, what = extra, f"{name}'s {k}-shot prefix ({extra} tokens)"
    return best, what


def check_lengths(task, data: str | None, tokenizer, context: int, model_label: str,
                  methods: list[str] | None = None) -> None:
    """Every example's prompt (with the methods' shots and the longest answer it may write) fits the context."""
    splits = _splits(task)
    written = max(int(task.max_len), int(task.eval_max_len))
    first = next((exs[0] for exs in splits.values() if exs), None)
    if first is None:
        return
    if methods is None:
        from gfnbench.catalog import methods_for

        methods = methods_for(task.name)
    shots, shots_what = _shots_prefix(task, methods, first, tokenizer)
    for split, examples in splits.items():
        if not examples:
            continue
        prompts = [task.prompt(ex) for ex in examples]
        extras = [f"{ex.answer or ''} {ex.rationale or ''}" for ex in examples]
        lengths = tokenizer(prompts, add_special_tokens=True)["input_ids"]
        extra_lengths = tokenizer(extras, add_special_tokens=False)["input_ids"]
        for ex, ids, extra in zip(examples, lengths, extra_lengths):
            need = len(ids) + shots + written + len(extra) + 8
            if need > context and need - shots <= context:
                raise InputError(
                    f"{shots_what} does not fit {model_label}'s context of {context} tokens: with the prompt of "
                    f"{locate(ex, data, split)} it needs {need}; run without that method or with a longer-context "
                    f"model")
            if need > context:
                raise InputError(
                    f"{locate(ex, data, split)}: the prompt is {len(ids)} tokens; with up to {written} written "
                    f"tokens and its answer it needs {need}, over {model_label}'s context of {context} tokens: "
                    f"shorten or remove it")


# --------------------------------------------------------------------------- results folder

def check_results_dir(root: str | Path) -> None:
    """Writable, or creatable in a writable folder, without creating anything."""
    path = Path(root)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise InputError(f"results directory {path} is not writable ({probe} is a file): choose a writable folder "
                         f"with --results_dir")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"results directory {path} is not writable (permission denied on {probe}): choose a "
                         f"writable folder with --results_dir")


# --------------------------------------------------------------------------- entry points

def _check(task: str, methods, seeds, profile, results_dir: str | None, model: str | None, data: str | None,
           compute: dict | None = None):
    """(task, method specs or None, the run's profile, results root): every input but the methods' settings.
    The results root is keyed by the profile as run (results_key), so the compute settings come before it."""
    from gfnbench.profiles import resolve_profile
    from gfnbench.records import results_root

    prof = resolve_profile(profile)
    task_obj = build_task(task, data)
    specs = None if methods is None else method_specs(task_obj.name, methods)
    check_seeds(seeds)
    check_context(task_obj, data, model or prof.model, None if specs is None else [s.name for s in specs])
    prof = run_profile(prof, compute, model)
    root = results_root(prof, results_dir, data)
    check_results_dir(root)
    return task_obj, specs, prof, root


def check_context(task_obj, data: str | None, model_name: str, names: list[str] | None) -> None:
    """Every example fits the model's context (once per task, data, model and methods in a process)."""
    tokenizer, context, label = model_tokenizer(model_name)
    key = (task_obj.name, data, model_name, None if names is None else tuple(names))
    if key in _LENGTHS_OK:
        return
    if tokenizer is None:
        try:   # bytes bound a byte-level BPE's tokens from above: the GGUF's tokenizer (~8 s) only if needed
            check_lengths(task_obj, data, BytesTokenizer(), context, label, names)
        except InputError:
            check_lengths(task_obj, data, gguf_tokenizer(), context, label, names)
    else:
        check_lengths(task_obj, data, tokenizer, context, label, names)
    _LENGTHS_OK.add(key)


_LENGTHS_OK: set = set()


def check_run(task: str, method: str, seed, profile="smoke", results_dir: str | None = None,
              model: str | None = None, data: str | None = None, settings: dict | None = None,
              compute: dict | None = None) -> RunPlan:
    """All of a `run`'s inputs, before anything is created or loaded: the plan `runner.run_plan` carries out.
    `settings` is {method: overrides}; `compute` overrides the profile's accelerator, devices, ..."""
    if not isinstance(method, str):
        raise InputError(f"method must be a name, got {method!r}")
    from gfnbench.catalog import get_method

    get_method(method)   # an unknown method is the first thing said
    task_obj, (spec,), prof, root = _check(task, [method], [seed], profile, results_dir, model, data, compute)
    others = sorted(set(settings or {}) - {spec.name})
    if others:
        raise ValueError(f"settings given for {', '.join(others)}, but this run is {spec.name}")
    overrides = settings_for(spec, settings)
    check_init(task_obj.name, spec.name, overrides)
    return RunPlan(task_obj, spec, seed, prof, overrides, root, prof.model, data)


def check_bench(task: str, profile="cpu", seeds=(0, 1, 2), methods=None, results_dir: str | None = None,
                model: str | None = None, data: str | None = None, settings: dict | None = None,
                compute: dict | None = None) -> BenchPlan:
    """All of a `bench`'s inputs (every seed and method), before the first run: the plan `bench` carries out."""
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__iter__"):
        raise InputError(f"seeds must be a list of integers, got {seeds!r}")
    if methods is not None and (isinstance(methods, (str, bytes)) or not hasattr(methods, "__iter__")):
        raise InputError(f"methods must be a list of names, got {methods!r}")
    seeds = list(seeds)
    task_obj, specs, prof, root = _check(task, None if methods is None else list(methods), seeds, profile,
                                         results_dir, model, data, compute)
    if specs is None:
        from gfnbench.catalog import get_method

        specs = [get_method(name) for name in default_methods(task_obj, prof)]
    names = [spec.name for spec in specs]
    unused = sorted(set(settings or {}) - set(names))
    if unused:
        raise ValueError(f"settings given for {', '.join(unused)}, which this bench does not run "
                         f"(its methods: {', '.join(names)})")
    overrides = {spec.name: settings_for(spec, settings) for spec in specs}
    for spec in specs:
        check_init(task_obj.name, spec.name, overrides[spec.name])
    return BenchPlan(task_obj, partial(construct_task, type(task_obj), task, data), tuple(specs), tuple(seeds),
                     prof, overrides, root, prof.model, data)


# --------------------------------------------------------------------------- what a run computes on, and with

def run_profile(profile, compute: dict | None = None, model: str | None = None):
    """The profile as run: its accelerator, devices, strategy, precision (those given) and model (--model), checked,
    its precision resolved (precision.resolve_precision: `auto` decided on this host, `32` spelled 32-true), its
    logger's package present, and its results folder keyed by all of it (results_key.keyed)."""
    from dataclasses import replace

    from gfnbench.devices import check_compute
    from gfnbench.precision import resolve_precision
    from gfnbench.profiles import resolve_profile
    from gfnbench.results_key import keyed
    from gfnbench.trainer import check_logger

    prof = resolve_profile(profile)
    given = {k: v for k, v in (compute or {}).items() if v is not None}
    unknown = set(given) - {"accelerator", "devices", "strategy", "precision"}
    if unknown:
        raise ValueError(f"unknown compute settings {sorted(unknown)}")
    prof = replace(prof, **given, model=model or prof.model)
    check_compute(prof.accelerator, prof.devices, prof.strategy, str(prof.precision))
    check_logger(prof.logger)
    return keyed(replace(prof, precision=resolve_precision(str(prof.precision), prof.accelerator)))


def settings_for(spec, settings: dict | None) -> dict:
    """This method's overrides out of {method: overrides}, checked against its settings class."""
    return spec.check_settings(dict((settings or {}).get(spec.name) or {}))


def default_methods(task, prof) -> list[str]:
    """Every method for the task, less the rows that run only when named (the rows started from SFT) unless the
    task's `bench_variants` wants them, and its `costly_methods` on profiles that skip them (said on stdout)."""
    from gfnbench.catalog import get_method, methods_for

    names = [m for m in methods_for(task.name) if not get_method(m).named_only or m in task.bench_variants]
    skipped = [m for m in names if prof.skip_costly and m in task.costly_methods]
    if skipped:
        print(f"[gfnbench] the {prof.name} profile skips {', '.join(skipped)} on {task.name} (too slow for its "
              f"time budget); run them with --methods {','.join(skipped)}")
    return [m for m in names if m not in skipped]


__all__ = ["InputError", "check_run", "check_bench", "check_seeds", "check_methods", "build_task",
           "check_results_dir", "check_lengths", "model_tokenizer", "default_methods", "run_profile"]
