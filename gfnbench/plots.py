"""Leaderboard figures: <task>.png (a likelihood-vs-diversity panel, a bar panel per metric with CI error bars,
training curves) and <task>_curves.png (learning curves against reward evaluations and wall-clock)."""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gfnbench.records import atomic_write_bytes
from gfnbench.tables import cells_by_key, metric_direction, metric_table, ordered, unique_values


def _curve_key(curve: list[dict]) -> str | None:
    """The training log-reward field of a curve ("log_reward" or the first key containing it)."""
    keys = list(dict.fromkeys(k for point in curve for k in point))
    if "log_reward" in keys:
        return "log_reward"
    return next((k for k in keys if "log_reward" in k), None)


def mean_train_curves(records: list[dict]) -> dict[str, pd.Series]:
    """method -> mean training log reward per step over that method's seeds."""
    out: dict[str, list[pd.Series]] = {}
    for r in records:
        curve = r.get("train_curve") or []
        key = _curve_key(curve)
        if key is None:
            continue
        frame = pd.DataFrame([p for p in curve if "step" in p and key in p])
        if frame.empty:
            continue
        series = pd.to_numeric(frame[key], errors="coerce").groupby(frame["step"]).mean()
        out.setdefault(r["method"], []).append(series)
    return {m: pd.concat(s, axis=1).mean(axis=1).sort_index() for m, s in out.items()}


def _bar_panel(ax, df: pd.DataFrame, metric: str, order: Sequence[str]) -> None:
    methods, splits, cells, _, _ = metric_table(df, metric, order)
    width = 0.8 / max(len(splits), 1)
    x = np.arange(len(methods))
    for k, split in enumerate(splits):
        rows = [cells.get((m, split)) for m in methods]
        mean = np.array([np.nan if c is None else c.mean for c in rows])
        lo = np.array([np.nan if c is None else c.lo for c in rows])
        hi = np.array([np.nan if c is None else c.hi for c in rows])
        ax.bar(x + (k - (len(splits) - 1) / 2) * width, mean, width, yerr=[mean - lo, hi - mean], capsize=2,
               label=split)
    ax.set_xticks(x, methods, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} (mean, 95% bootstrap CI)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(title="split", fontsize=7, title_fontsize=7)


def _curve_panel(ax, curves: dict[str, pd.Series], order: Sequence[str]) -> None:
    for method in ordered(curves, order):
        series = curves[method]
        window = max(1, len(series) // 25)
        smooth = series.rolling(window, min_periods=1).mean()
        ax.plot(series.index, smooth.values, label=method)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training log reward (mean over seeds)")
    ax.set_title("training log reward (rolling mean)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


TRADEOFF_X = ("logp_ref_max", "logp_ref")     # the first one present is the x axis
TRADEOFF_Y = "diversity"


def tradeoff_axes(df: pd.DataFrame) -> tuple[str, str] | None:
    """(x, y) metrics of the likelihood-vs-diversity panel, or None when a table lacks either."""
    metrics = set(df["metric"])
    x = next((m for m in TRADEOFF_X if m in metrics), None)
    return (x, TRADEOFF_Y) if x and TRADEOFF_Y in metrics else None


def _tradeoff_panel(ax, df: pd.DataFrame, x: str, y: str, order: Sequence[str]) -> None:
    """One point per (method, split) at its mean, with the 95% CI of each coordinate as error bars."""
    xs, ys = cells_by_key(df[df["metric"] == x]), cells_by_key(df[df["metric"] == y])
    splits = ordered(df[df["metric"] == x]["split"])
    markers = "osD^v<>"
    for i, method in enumerate(m for m in order if any((m, s) in xs and (m, s) in ys for s in splits)):
        for k, split in enumerate(s for s in splits if (method, s) in xs and (method, s) in ys):
            px, py = xs[(method, split)], ys[(method, split)]
            ax.errorbar(px.mean, py.mean, xerr=[[px.mean - px.lo], [px.hi - px.mean]],
                        yerr=[[py.mean - py.lo], [py.hi - py.mean]], fmt=markers[k % len(markers)],
                        color=f"C{i % 10}", capsize=3, label=method if len(splits) == 1 else f"{method} ({split})")
    ax.set_xlabel(f"{x} (log-likelihood under the scoring model)")
    ax.set_ylabel(y)
    ax.set_title(f"{y} vs {x} (mean, 95% bootstrap CI); up-right is better", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def save_png(fig, path: Path) -> Path:
    """Render a figure to memory, close it, then write it atomically (never a half-written PNG)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def plot(df: pd.DataFrame, records: list[dict], path: str | Path,
         method_order: Sequence[str] | None = None) -> Path:
    """PNG: a diversity-vs-likelihood panel when both are measured, one bar panel per metric (method x split,
    CI error bars), plus training curves when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    order = ordered([r["method"] for r in records], method_order)
    metrics = ordered(df["metric"])
    curves = mean_train_curves(records)
    tradeoff = tradeoff_axes(df)
    n_panels = bool(tradeoff) + len(metrics) + bool(curves)
    ncols = min(3, max(n_panels, 1))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.2 * nrows), squeeze=False)
    flat = list(axes.ravel())
    if tradeoff:
        _tradeoff_panel(flat.pop(0), df, *tradeoff, order)
        n_panels -= 1
    for ax, metric in zip(flat, metrics):
        _bar_panel(ax, df, metric, order)
    if curves:
        _curve_panel(flat[len(metrics)], curves, order)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    task = ", ".join(unique_values(records, "task"))
    fig.suptitle(f"{task} — policy model: {', '.join(unique_values(records, 'model'))}", fontsize=10)
    return save_png(fig, path)


CURVE_AXES = ("batches", "reward_evals", "wall_s")


def learning_curves(records: list[dict]) -> dict[str, dict[str, pd.DataFrame]]:
    """metric -> method -> frame of reward_evals, wall_s and the metric (one row per probe and seed), for every
    metric the records' `learning_curve`s carry (rng: exact TV, KL both ways, JS and valid mass)."""
    out: dict[str, dict[str, list]] = {}
    for r in records:
        points = r.get("learning_curve") or []
        if not points:
            continue
        frame = pd.DataFrame(points)
        frame["seed"] = r["seed"]
        for metric in (k for k in points[0] if k not in CURVE_AXES):
            out.setdefault(metric, {}).setdefault(r["method"], []).append(frame)
    return {metric: {m: pd.concat(frames, ignore_index=True) for m, frames in by_method.items()}
            for metric, by_method in out.items()}


def _curve_row(axes, metric: str, curves: dict[str, pd.DataFrame], records: list[dict],
               method_order: Sequence[str] | None) -> None:
    """One metric against reward evaluations (left) and training wall-clock (right), a line per method."""
    for i, method in enumerate(ordered(curves, method_order)):
        by_x = curves[method].groupby("reward_evals")
        ys = by_x[metric]
        label = f"{method} ({curves[method]['seed'].nunique()} seeds)"
        for ax, x in zip(axes, ("reward_evals", "wall_s")):
            xs = by_x[x].mean()
            ax.plot(xs.values, ys.mean().values, marker="o", ms=3, color=f"C{i % 10}", label=label)
            ax.fill_between(xs.values, ys.min().values, ys.max().values, color=f"C{i % 10}", alpha=0.18)
    direction = metric_direction(metric, records)
    for ax, xlabel in zip(axes, ("reward evaluations (samples scored during training)",
                                 "training wall-clock (s, probes excluded)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric + (f" ({direction} is better)" if direction in ("higher", "lower") else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def plot_learning_curves(records: list[dict], path: str | Path, method_order: Sequence[str] | None = None,
                         ) -> Path | None:
    """<task>_curves.png: every curve metric against reward evaluations and against training wall-clock, one
    line per trained method (mean over seeds) with a band from the best to the worst seed. None when no run has
    one."""
    curves = learning_curves(records)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(curves), 2, figsize=(11, 3.8 * len(curves)), squeeze=False)
    for row, (metric, by_method) in zip(axes, curves.items()):
        _curve_row(row, metric, by_method, records, method_order)
    task = ", ".join(unique_values(records, "task"))
    fig.suptitle(f"{task}: learning curves (mean over seeds, band = seed range) — "
                 f"{', '.join(unique_values(records, 'model'))}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return save_png(fig, Path(path))
