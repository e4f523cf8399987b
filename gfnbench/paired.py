"""`gfnbench compare`: is row A better than row B? A paired difference per split and metric, from run records.

Two rows' CIs can overlap although A beats B on almost every question: the questions' own difficulty spreads
both intervals. Pairing removes it. For every seed both rows ran and every question both were scored on, the
cell is A's per-question value minus B's; the [seeds, questions] matrix of differences gets the same two-way
bootstrap as a leaderboard cell (stats.seed_question_bootstrap), so seeds and questions are resampled
together for both rows. Seed s of A is paired with seed s of B: for a warm-started row (sft_gflownet) that is
the SFT run it started from; for two independent rows the pairing is arbitrary and harmless.

The difference is "separated" when its 95% interval excludes 0. Only metrics the records hold per question can
be paired (accuracy, pass@k, valid, logp_ref ...); exact metrics such as rng's TV have one value per run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gfnbench.leaderboard import check_consistent
from gfnbench.records import atomic_write_text, check_writable, read_runs_and_damage
from gfnbench.stats import seed_question_bootstrap

COLUMNS = ["split", "metric", "a", "b", "a_mean", "b_mean", "difference", "lo", "hi", "separated", "n_seeds",
           "seeds", "n_questions"]


def per_question(records: list[dict], method: str) -> dict[int, dict]:
    """seed -> that run's `per_question` block ({split: {metric: [...], "ids": [...]}}), for one method."""
    runs = {int(r["seed"]): r.get("per_question") or {} for r in records if r["method"] == method}
    if not runs:
        present = sorted({r["method"] for r in records})
        task = records[0]["task"] if records else "TASK"
        raise ValueError(f"no run records of method {method!r} (runs present: {', '.join(present) or 'none'}): "
                         f"run it first, e.g. gfnbench bench --task {task} --methods [{method}]")
    return runs


def shared_seeds(a: dict[int, dict], b: dict[int, dict], split: str, metric: str) -> list[int]:
    """The seeds whose runs of both rows hold this split's metric per question."""
    return sorted(s for s in a.keys() & b.keys() if metric in a[s].get(split, {}) and metric in b[s].get(split, {}))


def difference_matrix(a: dict[int, dict], b: dict[int, dict], split: str, metric: str, seeds: list[int]) -> np.ndarray:
    """[seeds, questions] of A - B, questions in A's order. Refuses runs scored on different questions: their
    difference would compare different items."""
    rows = []
    for seed in seeds:
        left, right = a[seed][split], b[seed][split]
        if list(left["ids"]) != list(right["ids"]):
            raise ValueError(f"seed {seed}: the two rows were scored on different {split} questions "
                             f"({len(left['ids'])} vs {len(right['ids'])} ids, or another order); re-run one of "
                             f"them on the same data and --eval_questions")
        rows.append(np.asarray(left[metric], dtype=float) - np.asarray(right[metric], dtype=float))
    return np.stack(rows)


def paired_cells(records: list[dict], a: str, b: str, metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per (split, metric) that both methods hold per question: A's and B's means over the paired
    cells, the mean difference A - B and its 95% two-way bootstrap interval."""
    runs_a, runs_b = per_question(records, a), per_question(records, b)
    first = runs_a[min(runs_a)]
    out = []
    for split, block in first.items():
        for metric in block:
            if metric == "ids" or (metrics and metric not in metrics):
                continue
            seeds = shared_seeds(runs_a, runs_b, split, metric)
            if not seeds:
                continue
            diff = difference_matrix(runs_a, runs_b, split, metric, seeds)
            a_vals = np.stack([np.asarray(runs_a[s][split][metric], dtype=float) for s in seeds])
            mean, lo, hi = seed_question_bootstrap(diff)
            out.append({"split": split, "metric": metric, "a": a, "b": b, "a_mean": float(a_vals.mean()),
                        "b_mean": float(a_vals.mean() - mean), "difference": mean, "lo": lo, "hi": hi,
                        "separated": bool(lo > 0 or hi < 0), "n_seeds": len(seeds),
                        "seeds": " ".join(map(str, seeds)), "n_questions": diff.shape[1]})
    if not out:
        raise ValueError(f"{a} and {b} share no per-question metric on any seed"
                         + (f" among {', '.join(metrics)}" if metrics else ""))
    return pd.DataFrame(out, columns=COLUMNS)


def render(table: pd.DataFrame, task: str, used: list[dict]) -> str:
    """Markdown: a header that says what was paired and which commits the two rows' runs (`used`) came from, then
    one line per (split, metric)."""
    a, b = table["a"].iloc[0], table["b"].iloc[0]
    commits = sorted({str(r.get("git_commit")) for r in used})
    models = sorted({str(r.get("model")) for r in used})
    lines = [f"# {task}: {a} - {b}, paired over seeds and questions", "",
             f"Mean of {a}'s per-question value minus {b}'s, over the seeds both ran (seed s with seed s) and the "
             f"same questions; 95% two-way bootstrap (seeds x questions resampled together for both rows, "
             f"10,000 draws). 'yes' in separated: the interval excludes 0.", "",
             f"Runs from commit(s) {', '.join(commits)}; model(s) {', '.join(models)}.", "",
             f"| split | metric | {a} | {b} | difference | 95% CI | separated | seeds | questions |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.split} | {row.metric} | {row.a_mean:.3f} | {row.b_mean:.3f} | {row.difference:+.3f} "
                     f"| [{row.lo:+.3f}, {row.hi:+.3f}] | {'yes' if row.separated else 'no'} | {row.seeds} "
                     f"| {row.n_questions} |")
    return "\n".join(lines) + "\n"


def write_comparison(results_dir: str | Path, task: str, a: str, b: str,
                     metrics: list[str] | None = None) -> list[Path]:
    """results/<task>_paired_<a>_vs_<b>.md and .csv, each written whole (atomic rename) or not at all."""
    records, damaged = read_runs_and_damage(results_dir, task)
    if damaged:
        raise damaged[0]
    table = paired_cells(records, a, b, metrics)
    used = [r for r in records if r["method"] in (a, b)]
    # the leaderboard's rule: one model, profile, data set, task setting and precision, or the rows do not compare
    check_consistent(used, results_dir)
    stem = Path(results_dir) / f"{task}_paired_{a}_vs_{b}"
    check_writable(stem.parent)
    return [atomic_write_text(stem.with_suffix(".md"), render(table, task, used)),
            atomic_write_text(stem.with_suffix(".csv"), table.to_csv(index=False, float_format="%.6g"))]


def write_standing_comparisons(results_dir: str | Path, task: str, pairs, ran: list[str]) -> list[Path]:
    """The task's standing questions (`Task.paired_comparisons`) whose two rows are both among `ran` (the bench's
    rows), each written as `gfnbench compare` writes it, so the table's own question comes with the table."""
    out: list[Path] = []
    for a, b in pairs:
        if a in ran and b in ran:
            out += write_comparison(results_dir, task, a, b)
    return out
