"""`gfnbench` command line: typed subcommands (jsonargparse reads the signatures), one-line errors."""
from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run(*, task: str, method: str, seed: int = 0, profile: str = "smoke", results_dir: str | None = None,
        model: str | None = None, overwrite: bool = False, data: str | None = None,
        hparams: dict | None = None) -> None:
    """Train (if needed) and evaluate one method on one task with one seed; writes a run record.

    Args:
        task: task name (see `gfnbench tasks`) or a path to a task .py file.
        method: method name (see `gfnbench methods`).
        seed: integer seed; same seed on CPU gives the same numbers.
        profile: smoke (tiny model, seconds), cpu (embedded SmolLM2) or paper (GPU).
        results_dir: where runs and tables go (default: the profile's, results/ for cpu).
        model: override the profile's model: embedded, tiny, an HF name or a local directory.
        overwrite: replace an existing run record instead of refusing.
        data: the task's examples from this file instead of its built-in set (continuation: prompts .txt or
            .jsonl; infill: a ROCStories CSV; subj: the folder with SUBJ's two files). Without --results_dir,
            such runs go to <profile results>/data-<name>-<sha256[:8]>/, apart from the built-in-data runs.
        hparams: method settings that override the profile's, e.g. '{"lr": 3e-4}' (PPO also takes
            "iterations"); they are stored in the record's config.
    """
    from gfnbench.harness import run as run_one

    out = run_one(task, method, seed, profile, results_dir, model, overwrite, data, hparams)
    print(f"[gfnbench] wrote {out}")


def bench(task: str = "arith", profile: str = "cpu", seeds: list[int] = [0, 1, 2],  # noqa: B006
          methods: list[str] | None = None, results_dir: str | None = None, model: str | None = None,
          overwrite: bool = False, data: str | None = None, hparams: dict | None = None) -> None:
    """Every method for a task x seeds, then the leaderboard table (existing runs are kept unless --overwrite).

    Args:
        task: task name or a path to a task .py file.
        profile: smoke, cpu (default for `make bench`) or paper.
        seeds: list of integer seeds.
        methods: subset of methods (default: every method registered for the task).
        results_dir: where runs and tables go (default: the profile's).
        model: override the profile's model.
        overwrite: re-run methods that already have a record.
        data: the task's examples from this file or folder instead of its built-in set (see `run`).
        hparams: method settings that override the profile's (see `run`).
    """
    from gfnbench.harness import bench as run_bench

    for path in run_bench(task, profile, list(seeds), methods, results_dir, model, overwrite, data, hparams):
        print(f"[gfnbench] wrote {path}")


def leaderboard(task: str = "arith", profile: str = "cpu", results_dir: str | None = None) -> None:
    """Turn run records into results/<task>.md, .csv, .tex and .png (mean and 95% bootstrap CI over seeds).

    Args:
        task: task name.
        profile: which profile's results folder to read (ignored when results_dir is given).
        results_dir: folder holding runs/<task>/...
    """
    from gfnbench.leaderboard import write_leaderboard
    from gfnbench.methods import methods_for
    from gfnbench.profiles import get_profile

    root = results_dir or get_profile(profile).results_dir
    for path in write_leaderboard(root, task, method_order=methods_for(task)):
        print(f"[gfnbench] wrote {path}")


def tasks() -> None:
    """List the registered tasks."""
    from gfnbench.tasks import TASKS

    for name, cls in sorted(TASKS.items()):
        print(f"{name:14s} {cls.description}")


def methods(task: str | None = None) -> None:
    """List the registered methods (those that apply to TASK if given).

    Args:
        task: only methods that apply to this task.
    """
    from gfnbench.methods import all_methods, methods_for

    specs = all_methods()
    for name in methods_for(task) if task else specs:
        spec = specs[name]
        scope = ("tasks that opt in" if spec.opt_in else ", ".join(spec.tasks) if spec.tasks else "all tasks")
        print(f"{name:14s} {spec.description} [{scope}]")


def _registry_epilog() -> str:
    from gfnbench.methods import all_methods
    from gfnbench.tasks import TASKS

    return f"tasks: {', '.join(sorted(TASKS))}; methods: {', '.join(all_methods())}"


def main(argv: list[str] | None = None) -> None:
    from jsonargparse import auto_cli

    from gfnbench.models import ModelNotAvailable

    try:
        auto_cli([run, bench, leaderboard, tasks, methods], args=argv,
                 description=f"gfnbench: GFlowNet fine-tuning benchmark.\n{_registry_epilog()}")
    except (ValueError, FileExistsError, PermissionError, ModelNotAvailable, KeyError) as err:
        print(f"gfnbench: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
