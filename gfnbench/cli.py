"""`gfnbench` command line: typed subcommands (jsonargparse reads the signatures), one-line errors."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from gfnbench.listing import BUILTIN_METHODS, BUILTIN_TASKS, check_method_name, check_task_name, known_tasks
from gfnbench.names import check_name

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# This module imports nothing heavy (no torch, Lightning, transformers, pandas, matplotlib) at import time:
# `--help`, `tasks`, `methods` and every error found before a run starts answer in well under a second.
DEFAULT_PROFILE = "cpu"   # run, bench and leaderboard alike; the Makefile's PROFILE default (a test checks)


def collect_settings(settings_file: str | None, method_settings: dict | None) -> dict:
    """{method: overrides} from the YAML file, then the --METHOD.FIELD pairs on top."""
    from gfnbench.settings import merge, read_settings_file

    return merge(read_settings_file(settings_file) if settings_file else {}, method_settings or {})


def settings_argv(argv: list[str]) -> list[str]:
    """`--gflownet.lr 3e-4 --ppo.iterations 10` -> `--method_settings '{"gflownet": {"lr": "3e-4"}, ...}'`."""
    import json

    from gfnbench.settings import parse_dotted

    rest, dotted = parse_dotted(argv, reserved={"method_settings"})
    return rest + ["--method_settings", json.dumps(dotted)] if dotted else rest


def method_settings_help() -> str:
    """Every method's settings with types and defaults, for `run --help` and `bench --help`."""
    from gfnbench.catalog import all_methods
    from gfnbench.settings import describe

    lines = [f"{name}: {describe(spec.settings)}" for name, spec in all_methods().items() if spec.settings]
    return "Settings per method -- " + "; ".join(lines)


def run(*, task: str, method: str, seed: int = 0, profile: str = DEFAULT_PROFILE, results_dir: str | None = None,
        model: str | None = None, overwrite: bool = False, data: str | None = None,
        settings: str | None = None, method_settings: dict | None = None, resume: bool = True,
        keep_checkpoints: bool = False, checkpoint_every: int = 10, accelerator: str | None = None,
        devices: int | None = None, strategy: str | None = None, precision: str | None = None,
        save_adapters: bool = True, train_steps: int | None = None, eval_questions: int | None = None,
        logger: str | None = None, verbose: bool = False) -> None:
    """Train (if needed) and evaluate one method on one task with one seed; writes a run record.

    Args:
        task: task name (see `gfnbench tasks`) or a path to a task .py file.
        method: method name (see `gfnbench methods`).
        seed: integer seed; same seed on CPU gives the same numbers.
        profile: cpu (the default, as for `bench` and `leaderboard`: embedded SmolLM2), smoke (tiny random
            model, seconds: for tests), paper (GPU), or a profile .yaml file: `base: cpu` and the fields it
            changes, e.g. `train_steps: 5` (docs/usage.md).
        results_dir: where runs and tables go (default: the profile's folder, results/ for cpu, with a
            component for each non-default model, precision, budget or data: docs/usage.md).
        model: override the profile's model: embedded, tiny, an HF name or a local directory (its runs get a
            folder of their own, and the record's config.profile.model says it).
        overwrite: replace an existing run record instead of refusing.
        data: the task's examples from this file instead of its built-in set (continuation: prompts .txt or
            .jsonl; infill: a ROCStories CSV; subj: the folder with SUBJ's two files). Without --results_dir,
            such runs go to <profile results>/data-<name>-<sha256[:8]>/, apart from the built-in-data runs.
        settings: a YAML file of method settings, {method: {field: value}}, e.g. 'gflownet: {lr: 3e-4}'.
        method_settings: method settings as --METHOD.FIELD VALUE (e.g. --gflownet.lr 3e-4), which win over the
            file; they are checked against the method's fields and stored in the record. METHOD_SETTINGS_HELP
        resume: continue a killed run from the checkpoint it left, when written with the same settings (says
            so in one line; `bench` always does); false: start it again from step 0.
        keep_checkpoints: keep the run's checkpoints/ folder after the record is written.
        checkpoint_every: optimizer steps between training checkpoints (every trained row but sft, whose
            training restarts and says so).
        accelerator: auto, cpu or gpu (default: the profile's, cpu).
        devices: processes, one per device; more than 1 needs --strategy ddp or fsdp (default: the profile's, 1).
        strategy: auto (one device), ddp (every process holds the model) or fsdp (GPUs; the model sharded).
        precision: 32-true (alias 32; every profile's default, the tables directly in results/), bf16-true (bf16
            base weights; LoRA, heads, log-probs and losses fp32), bf16-mixed (training under autocast) or auto
            (bf16-true on a CPU with AMX, an AMD CPU with avx512_bf16 or a bf16 GPU, else 32-true).
        save_adapters: also write the trained weights (LoRA adapters, heads) to the run folder's adapters.pt.
        train_steps: optimizer steps of the trained rows, instead of the profile's (a folder of their own).
        eval_questions: questions per evaluation split, instead of the profile's (a folder of their own).
        logger: csv (the default; always written), tensorboard or wandb (offline) beside it, in the run's train/.
        verbose: also show the third-party warnings and tips a run otherwise hides (gfnbench/quiet.py).
    """
    prof = check_names_early(task, [method], profile, train_steps=train_steps, eval_questions=eval_questions,
                             logger=logger)
    quiet(verbose)
    from gfnbench.devices import rank
    from gfnbench.runner import run as run_one

    compute = dict(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision)
    out = run_one(task, method, seed, prof, results_dir, model, overwrite, data,
                  collect_settings(settings, method_settings), resume=resume, keep_checkpoints=keep_checkpoints,
                  checkpoint_every=checkpoint_every, compute=compute, save_adapters=save_adapters)
    if rank() == 0:
        print(f"[gfnbench] wrote {out}")


def bench(task: str = "arith", profile: str = DEFAULT_PROFILE, seeds: list[int] = [0, 1, 2],  # noqa: B006
          methods: list[str] | None = None, results_dir: str | None = None, model: str | None = None,
          overwrite: bool = False, data: str | None = None, settings: str | None = None,
          method_settings: dict | None = None, accelerator: str | None = None, devices: int | None = None,
          strategy: str | None = None, precision: str | None = None, save_adapters: bool = True,
          jobs: int | None = None, train_steps: int | None = None, eval_questions: int | None = None,
          logger: str | None = None, verbose: bool = False) -> None:
    """Every method for a task x seeds, then the leaderboard table (existing runs are kept unless --overwrite).

    Args:
        task: task name or a path to a task .py file.
        profile: cpu (the default, as for `make bench`), smoke, paper or a profile .yaml file (see `run`).
        seeds: list of integer seeds.
        methods: subset of methods (default: every method registered for the task).
        results_dir: where runs and tables go (default: the profile's folder, keyed as for `run`).
        model: override the profile's model (its runs get a folder of their own).
        overwrite: re-run methods that already have a record.
        data: the task's examples from this file or folder instead of its built-in set (see `run`).
        settings: a YAML file of method settings, {method: {field: value}} (see `run`).
        method_settings: method settings as --METHOD.FIELD VALUE, per method (see `run`).
        accelerator: auto, cpu or gpu (default: the profile's, cpu).
        devices: processes, one per device; more than 1 needs --strategy ddp or fsdp (default: the profile's, 1).
        strategy: auto (one device), ddp (every process holds the model) or fsdp (GPUs; the model sharded).
        precision: 32-true (alias 32; every profile's default, the tables directly in results/), bf16-true (bf16
            base weights; LoRA, heads, log-probs and losses fp32), bf16-mixed (training under autocast) or auto
            (bf16-true on a CPU with AMX, an AMD CPU with avx512_bf16 or a bf16 GPU, else 32-true).
        save_adapters: also write each trained run's weights to its folder's adapters.pt.
        jobs: runs side by side, each with its share of the cores' torch threads (default: the profile's; cpu:
            one per core, up to 4; smoke and paper: 1).
        train_steps: optimizer steps of the trained rows, instead of the profile's (see `run`).
        eval_questions: questions per evaluation split, instead of the profile's (see `run`).
        logger: csv (the default), tensorboard or wandb (offline), for every trained run (see `run`).
        verbose: also show the third-party warnings and tips a run otherwise hides (gfnbench/quiet.py).
    """
    prof = check_names_early(task, methods or [], profile, train_steps=train_steps, eval_questions=eval_questions,
                             logger=logger)
    quiet(verbose)
    from gfnbench.bench import bench as run_bench

    compute = dict(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision)
    for path in run_bench(task, prof, list(seeds), methods, results_dir, model, overwrite, data,
                          collect_settings(settings, method_settings), compute=compute,
                          save_adapters=save_adapters, jobs=jobs):
        print(f"[gfnbench] wrote {path}")


def leaderboard(task: str = "arith", profile: str = DEFAULT_PROFILE, results_dir: str | None = None,
                allow_mixed_precision: bool = False, skip_damaged: bool = False, model: str | None = None,
                data: str | None = None, precision: str | None = None, train_steps: int | None = None,
                eval_questions: int | None = None, cells: str = "ci") -> None:
    """Turn run records into results/<task>.md, .csv, .tex and .png (mean and 95% bootstrap CI over seeds).

    Args:
        task: task name.
        profile: which profile's results folder to read (ignored when results_dir is given); with --model,
            --data, --precision, --train_steps and --eval_questions it names the folder as `run` and `bench` do.
        results_dir: folder holding runs/<task>/...
        allow_mixed_precision: table runs of different precisions together (refused otherwise); the header
            then lists each row's precision.
        skip_damaged: leave out run records that cannot make their row (refused otherwise, naming the file);
            the table's header then lists each one left out and why.
        model: the model the runs used, when not the profile's.
        data: the data file or folder the runs used (--data), when not the task's built-in set.
        precision: the precision the runs used, when not 32-true.
        train_steps: the runs' train_steps, when not the profile's.
        eval_questions: the runs' eval_questions, when not the profile's.
        cells: how a table cell is written: ci (mean [lo, hi], the default) or pm (mean ± half the CI's width).
    """
    from gfnbench.results_key import check_runs_found, table_root

    root = results_dir or table_root(profile, model, data, precision, train_steps=train_steps,
                                      eval_questions=eval_questions)
    if task.endswith(".py"):
        from gfnbench.preflight import task_class

        task = task_class(task).name
    check_name(task, "task")
    if task not in known_tasks() and not (Path(root) / "runs" / task).is_dir():
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(known_tasks())} "
                         f"(or a task with runs under {Path(root) / 'runs'})")
    if not results_dir:
        check_runs_found(task, root)
    from gfnbench.catalog import methods_for
    from gfnbench.leaderboard import write_leaderboard

    for path in write_leaderboard(root, task, method_order=methods_for(task),
                                  allow_mixed_precision=allow_mixed_precision, skip_damaged=skip_damaged,
                                  cells=cells):
        print(f"[gfnbench] wrote {path}")


def compare(task: str = "arith", a: str | None = None, b: str | None = None, profile: str = DEFAULT_PROFILE,
            results_dir: str | None = None, metrics: list[str] | None = None) -> None:
    """Row A against row B, paired over seeds and questions: writes results/<task>_paired_<a>_vs_<b>.md and
    .csv (mean of A - B per question and its 95% two-way bootstrap CI, per split and metric).

    Args:
        task: task name.
        a: the method whose advantage is measured (e.g. sft_gflownet).
        b: the method it is measured against (e.g. sft).
        profile: which profile's results folder to read (ignored when results_dir is given).
        results_dir: folder holding runs/<task>/...
        metrics: only these per-question metrics (default: every one both rows hold).
    """
    from gfnbench.paired import write_comparison
    from gfnbench.results_key import check_runs_found, table_root

    if not a or not b:
        raise ValueError("compare needs two methods: --a METHOD --b METHOD (e.g. --a sft_gflownet --b sft)")
    check_name(task, "task")
    check_method_name(a)
    check_method_name(b)
    root = results_dir or table_root(profile, None, None, None)
    if not results_dir:
        check_runs_found(task, root)
    for path in write_comparison(root, task, a, b, metrics):
        print(f"[gfnbench] wrote {path}")


def perf(quick: bool = False, model: str = "embedded", steps: int = 6, out: str = "results/perf.md") -> None:
    """Measure a GFlowNet step against a naive pipeline, interleaved in one run, and write results/perf.md + .json
    (FLOPs, FLOP limits, step breakdown, eval sampling vs HF generate, peak RSS, SubTB cost, bf16 check).

    Args:
        quick: tiny model, one step: checks that the script runs (seconds).
        model: embedded, tiny, an HF name or a local directory.
        steps: timed steps per pipeline (median), after one warm-up step.
        out: the report's path (the JSON goes beside it).
    """
    from gfnbench_perf import main as perf_main  # the benchmark tool lives beside the package, loaded on use

    perf_main(["--model", model, "--steps", str(steps), "--out", out] + (["--quick"] if quick else []))


def tasks() -> None:
    """List the built-in tasks."""
    for name, description in sorted(BUILTIN_TASKS.items()):
        print(f"{name:14s} {description}")


def methods(task: str | None = None) -> None:
    """List the registered methods (those that apply to TASK if given).

    Args:
        task: only methods that apply to this task.
    """
    if not task:
        for name, line in BUILTIN_METHODS.items():
            print(f"{name:14s} {line}")
        return
    check_task_name(task)
    from gfnbench.catalog import all_methods, methods_for
    from gfnbench.listing import method_scope

    specs = all_methods()
    for name in methods_for(task):
        print(f"{name:14s} {specs[name].description} [{method_scope(specs[name])}]")


def _registry_epilog() -> str:
    return f"tasks: {', '.join(sorted(BUILTIN_TASKS))}; methods: {', '.join(BUILTIN_METHODS)}"


def check_names_early(task: str, methods: list, profile: str, **overrides):
    """The errors a run or bench can find by name alone, in milliseconds and in the order the full pre-flight
    check says them (method, profile, task): the rest are checked after the heavy imports (preflight.py).
    Returns the profile with its flags applied (profiles.resolve_profile: a profile file is read here)."""
    from gfnbench.profiles import resolve_profile

    for method in methods:
        if isinstance(method, str):
            check_method_name(method)
    prof = resolve_profile(profile, **overrides)
    check_task_name(task)
    return prof


def quiet(verbose: bool) -> None:
    """Hide the known third-party noise (gfnbench/quiet.py) unless --verbose true."""
    if not verbose:
        from gfnbench.quiet import silence_known_noise

        silence_known_noise()


class UsageError(ValueError):
    """A command-line error found by the argument parser (unknown option, wrong type, missing value)."""


def _parser_class():
    from jsonargparse import ArgumentParser

    class Parser(ArgumentParser):
        def error(self, message: str, ex: Exception | None = None):
            raise UsageError(message) from ex

    return Parser


def _one_line(message: str) -> str:
    """jsonargparse's multi-line messages as one line: 'Parser key "seed": Expected a <class 'int'>...' ->
    '--seed: expected int, got abc'."""
    import re

    text = " ".join(str(message).split())
    text = re.sub(r'Parser key "(?:[\w.]+\.)?(\w+)":', r"--\1:", text)
    text = re.sub(r"Expected a <class '(\w+)'>\. Got value: (.*)", r"expected \1, got \2", text)
    text = re.sub(r'Key "(?:\w+\.)?(\w+)" is required but not included in config object or its value is None\.?',
                  r"--\1 is required", text)
    text = re.sub(r"arguments are required: (.*)",
                  lambda m: "arguments are required: " + re.sub(r"(?:\w+\.)?(\w+)", r"--\1", m.group(1)), text)
    return text


def _debug(argv: list[str]) -> tuple[list[str], bool]:
    debug = os.environ.get("GFNBENCH_DEBUG", "") not in ("", "0")
    if "--debug" in argv:
        argv = [a for a in argv if a != "--debug"]
        debug = True
    return argv, debug


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions that are a user's error, each as one line. The gfnbench ones come from modules loaded so
    far: an error class whose module was never imported cannot have been raised, so catching costs no import."""
    found: list[type[BaseException]] = [ValueError, KeyError, OSError]   # OSError: FileExists, Permission, ...
    for module, name in (("gfnbench.bench", "BenchJobFailed"), ("gfnbench.locks", "RunInProgress"),
                         ("gfnbench.models", "ModelNotAvailable")):
        if module in sys.modules:
            found.append(getattr(sys.modules[module], name))
    return tuple(found)


def main(argv: list[str] | None = None) -> None:
    """The command line. Every user error is one `gfnbench: error: ...` line on stderr and exit code 2;
    `--debug` (or GFNBENCH_DEBUG=1) shows the traceback instead."""
    argv, debug = _debug(list(sys.argv[1:] if argv is None else argv))
    try:
        from jsonargparse import auto_cli

        argv = settings_argv(argv)
        if argv[:1] in (["run"], ["bench"]) and {"-h", "--help"} & set(argv):   # only its help needs the methods
            for command in (run, bench):
                command.__doc__ = command.__doc__.replace("METHOD_SETTINGS_HELP", method_settings_help())
        auto_cli([run, bench, leaderboard, compare, perf, tasks, methods], args=argv, parser_class=_parser_class(),
                 description=f"gfnbench: GFlowNet fine-tuning benchmark.\n{_registry_epilog()}")
    except Exception as err:
        if debug or not isinstance(err, user_error_types()):
            raise
        from gfnbench.records import describe_os_error

        if isinstance(err, OSError) and err.errno is not None:   # raised by the OS: disk full, permission, ...
            message = describe_os_error(err)
        else:
            message = str(err) if not isinstance(err, KeyError) else f"missing key {err}"
        print(f"gfnbench: error: {_one_line(message)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
