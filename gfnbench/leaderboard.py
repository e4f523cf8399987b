"""`gfnbench leaderboard`: read a task's run records, summarize them (stats), and replace the task's table files
(tables, plots) as one set, so a reader never sees a half-written table or a mix of old and new files."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from gfnbench.cells import check_cell_style
from gfnbench.names import check_inside, check_name
from gfnbench.plots import plot, plot_learning_curves
from gfnbench.precision import record_precision
from gfnbench.records import DamagedRecord, atomic_write_text, check_writable, read_runs_and_damage
from gfnbench.stats import summarize
from gfnbench.tables import render_csv, render_latex, render_markdown

# --------------------------------------------------------------------------- entry point

def _mixed(records: list[dict], key: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for r in records:
        groups.setdefault(str(r.get(key)), []).append(f"{r['method']}/seed{r['seed']}")
    return groups


def check_consistent(records: list[dict], results_dir: str | Path, allow_mixed_precision: bool = False) -> None:
    """One policy model, one profile, one data set, one set of task settings and (unless allowed) one precision
    per table: mixing them would average incomparable numbers."""
    for key in ("model", "profile"):
        groups = _mixed(records, key)
        if len(groups) > 1:
            listing = "; ".join(f"{value!r}: {', '.join(runs)}" for value, runs in groups.items())
            raise ValueError(f"runs under {results_dir} mix {len(groups)} different {key}s ({listing}). "
                             f"Keep one {key} per results folder: use a different --results_dir for each.")
    check_one_data_set(records, results_dir)
    settings = [{**r, "settings": json.dumps(r.get("config", {}).get("task_settings", {}), sort_keys=True)}
                for r in records]
    groups = _mixed(settings, "settings")
    if len(groups) > 1:
        listing = "; ".join(f"{value}: {', '.join(runs)}" for value, runs in groups.items())
        raise ValueError(f"runs under {results_dir} mix task settings ({listing}): re-run them with one setting, "
                         f"or give each setting its own --results_dir.")
    groups = _mixed([{**r, "precision": record_precision(r)} for r in records], "precision")
    if len(groups) > 1 and not allow_mixed_precision:
        listing = "; ".join(f"{value}: {', '.join(runs)}" for value, runs in groups.items())
        raise ValueError(f"runs under {results_dir} mix precisions ({listing}): re-run them at one --precision, "
                         f"or pass --allow_mixed_precision true (the header then lists each row's precision).")


def data_set(record: dict) -> str:
    """Which examples a run was scored on: the task's built-in set or a `--data` file or folder, named with the
    first 12 hex digits of its sha256 (records before issue 26 give built-in data no checksum)."""
    sha = None if record.get("data_builtin") else record.get("data_sha256")
    return f"{record.get('data')} (sha256 {str(sha)[:12]})" if sha else f"{record.get('data')} (built-in)"


def check_one_data_set(records: list[dict], results_dir: str | Path) -> None:
    """One data set per table: built-in-data runs and `--data` runs (or two `--data` files) were scored on
    different questions, so their rows are not comparable."""
    groups = _mixed([{**r, "data_set": data_set(r)} for r in records], "data_set")
    if len(groups) > 1:
        listing = "; ".join(f"{value}: {', '.join(runs)}" for value, runs in groups.items())
        raise ValueError(f"runs under {results_dir} mix {len(groups)} data sets ({listing}). Keep one data set per "
                         f"results folder: give the --data runs their own --results_dir.")


def task_headline(task: str) -> tuple[str, ...]:
    """The task's declared `headline_metrics` when it is registered (the built-in ones, or a task file imported
    in this process), else () so the table shows every metric with a direction."""
    import gfnbench.tasks  # noqa: F401  (registers the built-in tasks)
    from gfnbench.tasks.base import TASKS

    return tuple(TASKS[task].headline_metrics) if task in TASKS else ()


def write_leaderboard(results_dir: str | Path, task: str, out_dir: str | Path | None = None,
                      method_order: Sequence[str] | None = None, allow_mixed_precision: bool = False,
                      skip_damaged: bool = False, cells: str = "ci",
                      headline: Sequence[str] | None = None) -> list[Path]:
    """Read the task's runs and write <task>.md, .csv, .tex and .png atomically; returns their paths. Every
    record is checked against its row before anything is written: a damaged one stops the table (one line), or
    with `skip_damaged` is left out and named in the header. `cells`: "ci" (mean [lo, hi]) or "pm" (mean ±
    half-width); `headline`: the wide table's metrics (default: the task's `headline_metrics`)."""
    check_name(task, "task")
    check_cell_style(cells)
    records, damaged = read_runs_and_damage(results_dir, task)
    if damaged and not skip_damaged:
        raise DamagedRecord(damaged[0].path, damaged[0].problem,
                            ", or pass --skip_damaged true to table the other runs without it")
    if not records:
        raise ValueError(f"no run records under {Path(results_dir) / 'runs' / task}: produce them with "
                         f"`gfnbench bench --task {task}` (or `gfnbench run --task {task} --method ... --seed ...`)")
    check_consistent(records, results_dir, allow_mixed_precision)
    df = summarize(records)
    headline = task_headline(task) if headline is None else tuple(headline)
    out = check_writable(out_dir if out_dir is not None else results_dir)
    names = [check_inside(out / f"{task}{ext}", out).name for ext in (".md", ".csv", ".tex", ".png")]
    skipped = [f"{d.path.relative_to(results_dir)} ({d.problem})" for d in damaged]
    with staged_table(out, names + [f"{task}_curves.png"]) as stage:
        md, csv, tex, png = (stage / name for name in names)
        atomic_write_text(md, render_markdown(df, records, task, method_order, read_bench_log(results_dir, task),
                                              skipped, cells, headline))
        atomic_write_text(csv, render_csv(df))
        atomic_write_text(tex, render_latex(df, method_order, records, cells, headline))
        plot(df, records, png, method_order, headline)
        curves = plot_learning_curves(records, stage / f"{task}_curves.png", method_order)
    return [out / name for name in names] + ([out / curves.name] if curves else [])


def read_bench_log(results_dir: str | Path, task: str) -> dict | None:
    """The last bench's log (records.BENCH_LOG), or None when there is none or it cannot be read."""
    import json

    from gfnbench.records import BENCH_LOG

    try:
        return json.loads((Path(results_dir) / "runs" / task / BENCH_LOG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- one table, replaced whole

class staged_table:
    """Write a table's files into a hidden folder beside them; on success rename each into place and only then
    remove the old set's files that the new set lacks (the table's `names`); on any error remove the staging
    folder and leave the old set untouched. An OSError (disk full, permission) becomes one-line WriteFailed."""

    def __init__(self, out: Path, names: list[str]):
        self.out, self.names = Path(out), list(names)
        self.stage: Path | None = None

    def __enter__(self) -> Path:
        import tempfile

        from gfnbench.records import WriteFailed, describe_os_error

        try:
            self.stage = Path(tempfile.mkdtemp(dir=self.out, prefix=".table-"))
        except OSError as err:
            raise WriteFailed(describe_os_error(err, self.out)) from err
        return self.stage

    def __exit__(self, exc_type, exc, tb) -> bool:
        import os
        import shutil

        from gfnbench.records import WriteFailed, describe_os_error

        try:
            if exc_type is not None:
                if isinstance(exc, OSError) and not isinstance(exc, WriteFailed):
                    raise WriteFailed(describe_os_error(exc, self.out / self.names[0])) from exc
                return False
            written = [n for n in self.names if (self.stage / n).is_file()]
            for name in written:
                os.replace(self.stage / name, self.out / name)
            for name in self.names:
                if name not in written:
                    (self.out / name).unlink(missing_ok=True)
            return False
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)
