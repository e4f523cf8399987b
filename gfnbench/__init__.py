"""gfnbench: a benchmark for GFlowNet fine-tuning of language models, from Python as from the command line.

    import gfnbench
    record = gfnbench.run("rng", "greedy", seed=0, profile="smoke", results_dir="my_results")
    table = gfnbench.bench("rng", profile="smoke", seeds=[0, 1], methods=["greedy", "temperature"])
    table = gfnbench.load_table("rng")            # the committed runs: records, .summary and .means DataFrames

Each call takes the options of its command (`gfnbench run --help`); `settings` is {method: {field: value}} or a
YAML file. Importing gfnbench imports nothing heavy (torch loads at the first run): the work is in gfnbench.api.
"""
from __future__ import annotations

import sys
import types

__all__ = ["run", "bench", "load_table"]


def run(task: str, method: str, seed: int = 0, profile="cpu", **options) -> dict:
    """Train (if the method trains) and evaluate one method with one seed, as `gfnbench run`; returns the run
    record (a dict: metrics, config, budget, ...). Options: those of `gfnbench run` (results_dir, model, data,
    settings, train_steps, eval_questions, logger, precision, overwrite, ...)."""
    from gfnbench.api import run as run_one

    return run_one(task, method, seed, profile, **options)


def bench(task: str, profile="cpu", seeds=(0, 1, 2), methods: list[str] | None = None, **options):
    """Every method (or `methods`) x seeds, then the table files, as `gfnbench bench`; returns the table
    (gfnbench.api.Table: .records, .summary and .means)."""
    from gfnbench.api import bench as run_bench

    return run_bench(task, profile, list(seeds), methods, **options)


def load_table(task: str, profile="cpu", **options):
    """A task's table from its run records (gfnbench.api.Table: .records, the .summary DataFrame of every cell's
    mean and 95% CI, and .means, one row per method), read from the folder `run` and `bench` use with the same
    options (profile, model, data, precision, train_steps, eval_questions) or from `results_dir`."""
    from gfnbench.api import load_table as load

    return load(task, profile, **options)


class _Package(types.ModuleType):
    """`gfnbench.bench` names both the function above and the module gfnbench/bench.py. Importing a submodule
    sets it as an attribute of its package, which would replace the function the first time the module loads;
    so the API's names keep their functions (the module stays `sys.modules["gfnbench.bench"]`)."""

    def __setattr__(self, name: str, value) -> None:
        if name in __all__ and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
