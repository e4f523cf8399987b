"""What the public API (`gfnbench.run`, `gfnbench.bench`, `gfnbench.load_table`) does: the command line's runs and
tables, returned as records and pandas DataFrames instead of printed. Nothing heavy is imported until a call."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

    from gfnbench.profiles import Profile


@dataclass(frozen=True)
class Table:
    """A task's leaderboard as data: its run records and their summary (stats.summarize: one row per method,
    split and metric, with mean, 95% CI bounds lo and hi, seeds and questions)."""

    task: str
    results_dir: Path
    records: list[dict]
    summary: pd.DataFrame

    @property
    def means(self) -> pd.DataFrame:
        """One row per method, one column per (split, metric): the cells' means, rows in the leaderboard's
        order (the built-in methods' listing order, then any others)."""
        from gfnbench.listing import known_methods

        rank = {name: i for i, name in enumerate(known_methods())}
        order = sorted(dict.fromkeys(self.summary["method"]), key=lambda m: rank.get(m, len(rank)))
        wide = self.summary.pivot_table(index="method", columns=["split", "metric"], values="mean", sort=False)
        return wide.reindex(order)

    def __str__(self) -> str:
        import pandas as pd

        with pd.option_context("display.width", 160, "display.max_columns", 12, "display.precision", 3):
            return (f"{self.task}: {len(self.records)} runs under {self.results_dir / 'runs' / self.task}\n"
                    f"{self.means}")


def table_from(task: str, root: Path, allow_mixed_precision: bool = False) -> Table:
    """The records under `root` and their summary, with the checks of `gfnbench leaderboard`: a damaged record
    or a mix of models, profiles or precisions is one error."""
    from gfnbench.leaderboard import check_consistent
    from gfnbench.names import check_name
    from gfnbench.records import read_runs
    from gfnbench.stats import summarize

    check_name(task, "task")
    records = read_runs(root, task)
    if not records:
        raise ValueError(f"no run records under {Path(root) / 'runs' / task}: make them with gfnbench.bench("
                         f"{task!r}) or gfnbench.run({task!r}, method, seed)")
    check_consistent(records, root, allow_mixed_precision)
    return Table(task, Path(root), records, summarize(records))


def load_table(task: str, profile: str | Profile = "cpu", results_dir: str | None = None, model: str | None = None,
               data: str | None = None, precision: str | None = None, allow_mixed_precision: bool = False,
               **overrides) -> Table:
    """The table of `task` in the folder `run` and `bench` use with the same options (or in `results_dir`)."""
    from gfnbench.results_key import check_runs_found, table_root

    if results_dir:
        return table_from(task, Path(results_dir), allow_mixed_precision)
    root = table_root(profile, model, data, precision, **overrides)
    check_runs_found(task, root)       # none here, some elsewhere: that folder and its options
    return table_from(task, root, allow_mixed_precision)


def run(task: str, method: str, seed: int = 0, profile: str | Profile = "cpu", *, settings: dict | str | None = None,
        train_steps: int | None = None, eval_questions: int | None = None, logger: str | None = None,
        accelerator: str | None = None, devices: int | None = None, strategy: str | None = None,
        precision: str | None = None, verbose: bool = False, **options) -> dict:
    """One run, as `gfnbench run` (the same options, the same record on disk); returns its record."""
    from gfnbench.cli import check_names_early, quiet
    from gfnbench.records import RECORD, read_record
    from gfnbench.runner import run as run_one

    prof = check_names_early(task, [method], profile, train_steps=train_steps, eval_questions=eval_questions,
                             logger=logger)
    quiet(verbose)
    compute = dict(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision)
    out = run_one(task, method, seed, prof, settings=method_settings(settings), compute=compute, **options)
    return read_record(Path(out) / RECORD)


def bench(task: str, profile: str | Profile = "cpu", seeds: list[int] = (0, 1, 2), methods: list[str] | None = None,
          *, settings: dict | str | None = None, train_steps: int | None = None, eval_questions: int | None = None,
          logger: str | None = None, accelerator: str | None = None, devices: int | None = None,
          strategy: str | None = None, precision: str | None = None, verbose: bool = False, **options) -> Table:
    """Every method x seed, as `gfnbench bench` (the same options, runs and table files); returns the table."""
    from gfnbench.bench import bench as run_bench
    from gfnbench.cli import check_names_early, quiet

    prof = check_names_early(task, list(methods or []), profile, train_steps=train_steps,
                             eval_questions=eval_questions, logger=logger)
    quiet(verbose)
    compute = dict(accelerator=accelerator, devices=devices, strategy=strategy, precision=precision)
    paths = run_bench(task, prof, list(seeds), methods, settings=method_settings(settings), compute=compute,
                      **options)
    table_md = next(p for p in paths if p.suffix == ".md")
    return table_from(table_md.stem, table_md.parent)


def method_settings(settings: dict | str | None) -> dict:
    """{method: {field: value}} given as such, or the path of a YAML file holding it (as `--settings`)."""
    from gfnbench.settings import read_settings_file

    if settings is None or isinstance(settings, dict):
        return dict(settings or {})
    return read_settings_file(str(settings))
