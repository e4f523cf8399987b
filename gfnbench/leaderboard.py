"""Leaderboard tables from run records: mean and 95% bootstrap CI over seeds, as Markdown, CSV, LaTeX and PNG."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from gfnbench.records import atomic_write_text, read_runs

EXACT_LIMIT = 100_000


def bootstrap_ci(values, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap of the mean.

    With few seeds (n**n <= 100000, e.g. 3 seeds -> 27 resamples) every resample is enumerated, so the interval
    is exact and deterministic; otherwise Monte Carlo with a seeded generator. Percentiles: numpy "linear".
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap of no values")
    if x.size == 1:
        return float(x[0]), float(x[0]), float(x[0])
    if x.size ** x.size <= EXACT_LIMIT:
        idx = np.array(list(itertools.product(range(x.size), repeat=x.size)))
    else:
        idx = np.random.default_rng(seed).integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha], method="linear")
    return float(x.mean()), float(lo), float(hi)


def summarize(records: list[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        for split, metrics in r["metrics"].items():
            for metric, value in metrics.items():
                rows.append({"method": r["method"], "split": split, "metric": metric, "value": value,
                             "seed": r["seed"]})
    long = pd.DataFrame(rows)
    out = []
    for (method, split, metric), g in long.groupby(["method", "split", "metric"], sort=False):
        mean, lo, hi = bootstrap_ci(g["value"].to_numpy())
        out.append({"method": method, "split": split, "metric": metric, "mean": mean, "lo": lo, "hi": hi,
                    "n_seeds": len(g), "seeds": " ".join(str(s) for s in sorted(g["seed"]))})
    return pd.DataFrame(out)


def _unique(records: list[dict], key: str) -> list[str]:
    return sorted({str(r[key]) for r in records})


def header(records: list[dict], task: str) -> str:
    seeds = sorted({r["seed"] for r in records})
    first = records[0]
    lines = [
        f"# Leaderboard: {task}",
        "",
        f"- policy model: {', '.join(_unique(records, 'model'))}",
        f"- log-likelihood (`logp_ref`) scored by: {', '.join(_unique(records, 'scoring_model'))}",
        f"- data: {', '.join(_unique(records, 'data'))}",
        f"- profile: {', '.join(_unique(records, 'profile'))}; evaluation samples per question: "
        f"{first['config'].get('eval_samples')} at T = {first['config'].get('eval_temperature')} "
        f"(majority vote) unless the method says otherwise; questions per split: "
        f"{first['config'].get('profile', {}).get('eval_questions')}",
        f"- seeds: {', '.join(map(str, seeds))}; cells: mean [95% bootstrap CI over seeds, exact enumeration]",
        f"- git commit(s): {', '.join(_unique(records, 'git_commit'))}",
    ]
    return "\n".join(lines) + "\n"


def _cell(row) -> str:
    return f"{row['mean']:.3f} [{row['lo']:.3f}, {row['hi']:.3f}]"


def pivot(df: pd.DataFrame, metric: str, method_order: list[str]) -> pd.DataFrame:
    sub = df[df.metric == metric].copy()
    sub["cell"] = sub.apply(_cell, axis=1)
    table = sub.pivot(index="method", columns="split", values="cell")
    return table.reindex([m for m in method_order if m in table.index])


def render_markdown(df: pd.DataFrame, records: list[dict], task: str) -> str:
    order = list(dict.fromkeys(r["method"] for r in records))
    parts = [header(records, task)]
    for metric in dict.fromkeys(df.metric):
        table = pivot(df, metric, order)
        cols = list(table.columns)
        parts.append(f"\n## {metric}\n\n| method | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n")
        parts.append("".join(f"| {m} | " + " | ".join(str(table.loc[m, c]) for c in cols) + " |\n"
                             for m in table.index))
    return "".join(parts)


def render_latex(df: pd.DataFrame, records: list[dict]) -> str:
    order = list(dict.fromkeys(r["method"] for r in records))
    out = []
    for metric in dict.fromkeys(df.metric):
        sub = df[df.metric == metric]
        splits = list(dict.fromkeys(sub.split))
        out.append(f"% {metric}: mean with 95% bootstrap CI over seeds\n\\begin{{tabular}}{{l" + "c" * len(splits)
                   + "}\n\\toprule\nmethod & " + " & ".join(s.replace("_", "\\_") for s in splits) + " \\\\\n\\midrule\n")
        for m in order:
            cells = []
            for s in splits:
                r = sub[(sub.method == m) & (sub.split == s)]
                cells.append("--" if r.empty else
                             f"${r['mean'].iloc[0]:.3f}_{{\\,[{r['lo'].iloc[0]:.3f}, {r['hi'].iloc[0]:.3f}]}}$")
            out.append(m.replace("_", "\\_") + " & " + " & ".join(cells) + " \\\\\n")
        out.append("\\bottomrule\n\\end{tabular}\n\n")
    return "".join(out)


def plot(df: pd.DataFrame, records: list[dict], path: Path, task: str) -> None:
    """One panel per metric (bars with CI per method and split), plus training curves where runs have them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(df.metric))
    curves = [r for r in records if r.get("train_curve")]
    n = len(metrics) + bool(curves)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4), squeeze=False)
    order = list(dict.fromkeys(r["method"] for r in records))
    for ax, metric in zip(axes[0], metrics):
        sub = df[df.metric == metric]
        splits = list(dict.fromkeys(sub.split))
        width = 0.8 / max(len(splits), 1)
        for k, split in enumerate(splits):
            s = sub[sub.split == split].set_index("method").reindex(order)
            x = np.arange(len(order)) + k * width
            ax.bar(x, s["mean"], width, yerr=[s["mean"] - s["lo"], s["hi"] - s["mean"]], capsize=2, label=split)
        ax.set_xticks(np.arange(len(order)) + 0.4 - width / 2, order, rotation=45, ha="right")
        ax.set_title(metric)
        ax.legend(fontsize=7)
    if curves:
        ax = axes[0][-1]
        for method in dict.fromkeys(r["method"] for r in curves):
            runs = [pd.DataFrame(r["train_curve"]) for r in curves if r["method"] == method]
            mean = pd.concat(runs).groupby("step")["log_reward"].mean()
            ax.plot(mean.index, mean.values, label=method)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("mean log reward (untempered)")
        ax.set_title("training reward")
        ax.legend(fontsize=7)
    fig.suptitle(f"{task}: {records[0]['model'][:60]}", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def write_leaderboard(results_dir: str | Path, task: str, out_dir: str | Path | None = None) -> list[Path]:
    records = read_runs(results_dir, task)
    if not records:
        raise ValueError(f"no run records under {Path(results_dir) / 'runs' / task}: run `gfnbench bench --task "
                         f"{task}` (or `make bench TASK={task}`) first")
    for key in ("model", "profile"):
        if len(_unique(records, key)) > 1:
            raise ValueError(f"records under {results_dir} mix {key}s {_unique(records, key)}: keep one {key} "
                             f"per results folder (--results_dir)")
    df = summarize(records)
    out = Path(out_dir or results_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{task}.md", out / f"{task}.csv", out / f"{task}.tex", out / f"{task}.png"]
    atomic_write_text(paths[0], render_markdown(df, records, task))
    atomic_write_text(paths[1], df.to_csv(index=False))
    atomic_write_text(paths[2], render_latex(df, records))
    plot(df, records, paths[3], task)
    return paths
