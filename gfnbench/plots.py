"""Leaderboard figures: <task>.png (a likelihood-vs-diversity panel, one panel per headline metric with every
method at its mean and 95% CI, training curves) and <task>_curves.png (learning curves against reward evaluations
and wall-clock).

Honest by construction: every metric panel has every method on the same x positions in the tables' row order
(a row without the metric is marked n/a or – in place), the y axis spans the data rather than starting at 0, and
each legend is drawn once per figure."""
from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gfnbench.cells import NOT_APPLICABLE, cells_by_key, metric_direction, na_reasons, ordered
from gfnbench.labels import labelled, metric_label, row_order
from gfnbench.records import atomic_write_bytes
from gfnbench.tables import unique_values
from gfnbench.wide_table import headline_metrics

SPLIT_MARKERS = "osD^v<>"


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


def split_offsets(n_splits: int, width: float = 0.6) -> np.ndarray:
    """Horizontal offsets of a method's splits around its x position (0 for one split)."""
    if n_splits <= 1:
        return np.zeros(max(n_splits, 1))
    return np.linspace(-width / 2, width / 2, n_splits)


def _metric_panel(ax, df: pd.DataFrame, metric: str, rows: Sequence[str], splits: Sequence[str],
                  records: list[dict], na: dict[tuple[str, str], str]) -> None:
    """Each method at its mean with the 95% CI as an error bar, one marker per split; a method without the
    metric keeps its x position and is marked n/a (the records say why) or – (they hold nothing)."""
    import matplotlib.transforms as mtransforms

    cells = cells_by_key(df[df["metric"] == metric])
    x = np.arange(len(rows))
    offsets = split_offsets(len(splits))
    for k, split in enumerate(splits):
        held = [(i, cells[(m, split)]) for i, m in enumerate(rows) if (m, split) in cells]
        if not held:
            continue
        xs = np.array([x[i] + offsets[k] for i, _ in held])
        mean = np.array([c.mean for _, c in held])
        err = np.array([[c.mean - c.lo for _, c in held], [c.hi - c.mean for _, c in held]])
        ax.errorbar(xs, mean, yerr=np.clip(err, 0, None), fmt=SPLIT_MARKERS[k % len(SPLIT_MARKERS)], ms=4,
                    color=f"C{k % 10}", capsize=2, lw=1, label=split)
    blend = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    for i, method in enumerate(rows):
        if not any((method, s) in cells for s in splits):
            ax.text(x[i], 0.5, NOT_APPLICABLE if (method, metric) in na else "no value", transform=blend,
                    ha="center", va="center", rotation=90, fontsize=7, color="0.45")
    ax.set_xticks(x, rows, rotation=35, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_title(labelled(metric, metric_direction(metric, records)), fontsize=9)
    ax.set_ylabel(metric_label(metric), fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="y", alpha=0.3)


def row_color(method: str, rows: Sequence[str]) -> str:
    """A method's colour: that of its place in the tables' row order, the same in every panel."""
    return f"C{list(rows).index(method) % 10}" if method in rows else "0.3"


def _curve_panel(ax, curves: dict[str, pd.Series], order: Sequence[str]) -> None:
    for method in ordered(curves, order):
        series = curves[method]
        window = max(1, len(series) // 25)
        smooth = series.rolling(window, min_periods=1).mean()
        ax.plot(series.index, smooth.values, label=method, color=row_color(method, order))
    ax.set_xlabel("optimizer step", fontsize=8)
    ax.set_ylabel("training log reward (mean over seeds)", fontsize=8)
    ax.set_title("training log reward (rolling mean)", fontsize=9)
    ax.tick_params(labelsize=8)
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
    for method in (m for m in order if any((m, s) in xs and (m, s) in ys for s in splits)):
        for k, split in enumerate(s for s in splits if (method, s) in xs and (method, s) in ys):
            px, py = xs[(method, split)], ys[(method, split)]
            ax.errorbar(px.mean, py.mean, xerr=[[px.mean - px.lo], [px.hi - px.mean]],
                        yerr=[[py.mean - py.lo], [py.hi - py.mean]], fmt=markers[k % len(markers)],
                        color=row_color(method, order), capsize=3,
                        label=method if len(splits) == 1 else f"{method} ({split})")
    ax.set_xlabel(f"{metric_label(x)} (under the scoring model)", fontsize=8)
    ax.set_ylabel(metric_label(y), fontsize=8)
    ax.set_title(f"{metric_label(y)} vs {metric_label(x)}: up-right is better", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def save_png(fig, path: Path, dpi: int = 100) -> Path:
    """Render a figure (laid out by its constrained layout) to memory, close it, then write it atomically
    (never a half-written PNG)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def _split_legend(fig, splits: Sequence[str]) -> None:
    """One legend for the whole figure, naming the splits' markers (none when there is one split: the title
    names it)."""
    from matplotlib.lines import Line2D

    if len(splits) < 2:
        return
    handles = [Line2D([], [], ls="none", marker=SPLIT_MARKERS[k % len(SPLIT_MARKERS)], color=f"C{k % 10}",
                      label=s) for k, s in enumerate(splits)]
    fig.legend(handles=handles, title="split", loc="outside lower center", ncols=len(splits), fontsize=8,
               title_fontsize=8)


def plot(df: pd.DataFrame, records: list[dict], path: str | Path, method_order: Sequence[str] | None = None,
         headline: Sequence[str] | None = None) -> Path:
    """PNG: a diversity-vs-likelihood panel when both are measured, one panel per headline metric (every method,
    every split, mean and 95% CI; `headline` as for the tables), plus training curves when present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rows = row_order([r["method"] for r in records], method_order)
    metrics = headline_metrics(df, records, headline)
    splits = ordered(df[df["metric"].isin(metrics)]["split"])
    curves = mean_train_curves(records)
    tradeoff = tradeoff_axes(df)
    n_panels = bool(tradeoff) + len(metrics) + bool(curves)
    ncols = min(3, max(n_panels, 1))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = plt.figure(figsize=(4.6 * ncols, 3.5 * nrows + 0.7), layout="constrained")
    flat = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    panels = iter(flat)
    if tradeoff:
        _tradeoff_panel(next(panels), df, *tradeoff, rows)
    na = na_reasons(records)
    for metric in metrics:
        _metric_panel(next(panels), df, metric, rows, splits, records, na)
    if curves:
        _curve_panel(next(panels), curves, rows)
    for ax in flat[n_panels:]:
        ax.set_visible(False)
    _split_legend(fig, splits)
    task = ", ".join(unique_values(records, "task"))
    where = f", split {splits[0]}" if len(splits) == 1 else ""
    fig.suptitle(f"{task}{where}: mean and 95% bootstrap CI — policy model: "
                 f"{', '.join(unique_values(records, 'model'))}", fontsize=9)
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
               rows: Sequence[str]) -> None:
    """One metric against reward evaluations (left) and training wall-clock (right), a line per method in the
    tables' row order, each method in the colour of its row (so one figure legend serves every panel)."""
    for method in (m for m in rows if m in curves):
        color = row_color(method, rows)
        by_x = curves[method].groupby("reward_evals")
        ys = by_x[metric]
        n_seeds = curves[method]["seed"].nunique()
        label = f"{method} ({n_seeds} seed{'s' if n_seeds != 1 else ''})"
        for ax, x in zip(axes, ("reward_evals", "wall_s")):
            xs = by_x[x].mean()
            ax.plot(xs.values, ys.mean().values, marker="o", ms=3, color=color, label=label)
            ax.fill_between(xs.values, ys.min().values, ys.max().values, color=color, alpha=0.18)
    for ax, xlabel in zip(axes, ("reward evaluations (samples scored during training)",
                                 "training wall-clock (s, probes excluded)")):
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(labelled(metric, metric_direction(metric, records)), fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)


def plot_learning_curves(records: list[dict], path: str | Path, method_order: Sequence[str] | None = None,
                         ) -> Path | None:
    """<task>_curves.png: every curve metric against reward evaluations and against training wall-clock, one
    line per trained method (mean over seeds) with a band from the best to the worst seed, one legend for the
    figure. None when no run has one."""
    curves = learning_curves(records)
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [m for m in row_order([r["method"] for r in records], method_order)
            if any(m in by_method for by_method in curves.values())]
    fig = plt.figure(figsize=(10, 2.6 * len(curves) + 0.9), layout="constrained")
    axes = fig.subplots(len(curves), 2, squeeze=False)
    for row, (metric, by_method) in zip(axes, curves.items()):
        _curve_row(row, metric, by_method, records, rows)
    seen: dict[str, object] = {}
    for ax in axes.ravel():
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncols=min(len(seen), 5), fontsize=8)
    task = ", ".join(unique_values(records, "task"))
    fig.suptitle(f"{task}: learning curves (mean over seeds, band = seed range) — "
                 f"{', '.join(unique_values(records, 'model'))}", fontsize=9)
    return save_png(fig, Path(path))
