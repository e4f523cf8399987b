"""Leaderboard tables from run records: mean and 95% percentile-bootstrap CI over seeds.

Outputs per task: Markdown (with a provenance header), CSV (long format, full precision), LaTeX (one
``tabular`` per metric, needs ``booktabs``) and a PNG. Each cell is "mean [lo, hi]".

The CI is a percentile bootstrap of the mean over seeds. With few seeds (n**n <= 100000, i.e. n <= 6) every
one of the n**n equally likely resamples is enumerated, so the interval is the exact bootstrap interval and
does not depend on a random seed; larger n uses a seeded Monte-Carlo resample. Percentiles use numpy's
``quantile(method="linear")`` (Hyndman & Fan type 7, numpy's default) on the resample means. With 3 seeds
the bootstrap interval is narrow and optimistic: it describes seed spread, not a guarantee.
"""
from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gfnbench.records import atomic_write_bytes, atomic_write_text, check_writable, read_runs

EXACT_LIMIT = 100_000
SUMMARY_COLUMNS = ["method", "split", "metric", "mean", "lo", "hi", "n_seeds", "seeds", "n_questions", "ci"]
MISSING = "–"


# --------------------------------------------------------------------------- statistics

def _resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """All n**n index tuples when that is small (exact), else a seeded Monte-Carlo draw."""
    if n ** n <= EXACT_LIMIT:
        return np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_ci(values: Iterable[float], level: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): percentile bootstrap of the mean; exact enumeration for small n (see module doc)."""
    x = np.asarray(list(values), dtype=float).ravel()
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"bootstrap_ci got non-finite values {x.tolist()}")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    means = x[_resample_indices(x.size, n_resamples, seed)].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha], method="linear")
    return mean, float(lo), float(hi)


def seed_question_bootstrap(values: np.ndarray, level: float = 0.95, n_resamples: int = 10_000,
                            seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi) of a [seeds, questions] matrix: seeds and questions resampled independently (a two-way
    percentile bootstrap), so the interval covers which questions were asked as well as training and sampling
    noise. With 3 seeds and 8 questions the seed-only interval ignored the larger of the two."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 2 or x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError(f"seed_question_bootstrap needs a finite [seeds, questions] matrix, got shape {x.shape}")
    n_s, n_q = x.shape
    rng = np.random.default_rng(seed)
    w_s = rng.multinomial(n_s, np.full(n_s, 1 / n_s), size=n_resamples)      # how often each seed is drawn
    w_q = rng.multinomial(n_q, np.full(n_q, 1 / n_q), size=n_resamples)      # how often each question is drawn
    means = np.einsum("rs,sq,rq->r", w_s, x, w_q) / (n_s * n_q)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha], method="linear")
    return float(x.mean()), float(lo), float(hi)


def _question_matrix(entries: list[dict]) -> np.ndarray | None:
    """[seeds, questions] when every seed's record has this metric per question, on the same questions."""
    rows = [e["per_question"] for e in entries]
    if any(r is None for r in rows) or len({tuple(e["ids"]) for e in entries}) != 1:
        return None
    return np.array(rows, dtype=float)


def summarize(records: list[dict]) -> pd.DataFrame:
    """Long format: one row per (method, split, metric), in order of first appearance. Metrics the records
    carry per question get the seed x question bootstrap; the rest (exact metrics, old records) seeds only."""
    seen: set[tuple[str, int]] = set()
    cells: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        key = (r["method"], r["seed"])
        if key in seen:
            raise ValueError(f"two records for method {r['method']!r} seed {r['seed']}")
        seen.add(key)
        for split, metrics in r["metrics"].items():
            per_q = (r.get("per_question") or {}).get(split) or {}
            for metric, value in metrics.items():
                cells.setdefault((r["method"], split, metric), []).append(
                    {"seed": int(r["seed"]), "value": float(value), "per_question": per_q.get(metric),
                     "ids": per_q.get("ids")})
    rows = []
    for (method, split, metric), entries in cells.items():
        matrix = _question_matrix(entries)
        if matrix is not None:
            (mean, lo, hi), n_q, ci = seed_question_bootstrap(matrix), matrix.shape[1], "seeds x questions"
        else:
            (mean, lo, hi), n_q, ci = bootstrap_ci([e["value"] for e in entries]), 0, "seeds"
        rows.append({"method": method, "split": split, "metric": metric, "mean": mean, "lo": lo, "hi": hi,
                     "n_seeds": len(entries), "seeds": " ".join(map(str, sorted(e["seed"] for e in entries))),
                     "n_questions": n_q, "ci": ci})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# --------------------------------------------------------------------------- shared table helpers

def _ordered(values: Iterable[str], order: Sequence[str] | None = None) -> list[str]:
    """Given order first, then the rest in order of first appearance: stable across reruns."""
    present = list(dict.fromkeys(values))
    head = [v for v in (order or []) if v in present]
    return head + [v for v in present if v not in head]


def _decimals(sub: pd.DataFrame) -> int:
    """3 decimals, more when a metric is tiny (so 0.0004 is not printed as 0.000)."""
    mags = np.abs(sub[["mean", "lo", "hi"]].to_numpy(dtype=float))
    mags = mags[mags > 0]
    if mags.size == 0:
        return 3
    return int(max(3, min(6, -math.floor(math.log10(mags.max())) + 1)))


def _lookup(sub: pd.DataFrame) -> dict[tuple[str, str], pd.Series]:
    return {(row.method, row.split): row for row in sub.itertuples(index=False)}


def format_cell(mean: float, lo: float, hi: float, decimals: int = 3) -> str:
    """"0.312 [0.280, 0.350]": mean and CI bounds."""
    return f"{mean:.{decimals}f} [{lo:.{decimals}f}, {hi:.{decimals}f}]"


def _metric_table(df: pd.DataFrame, metric: str, method_order: Sequence[str] | None):
    """(methods, splits, {(method, split): row}, decimals, max_n) for one metric."""
    sub = df[df["metric"] == metric]
    return (_ordered(sub["method"], method_order), _ordered(sub["split"]), _lookup(sub), _decimals(sub),
            int(sub["n_seeds"].max()))


# --------------------------------------------------------------------------- markdown

def _unique(records: list[dict], key: str) -> list[str]:
    return list(dict.fromkeys(str(r.get(key, "unknown")) for r in records))


def _seed_phrase(df: pd.DataFrame) -> str:
    counts = sorted(set(df["n_seeds"].astype(int)))
    if len(counts) == 1:
        return f"{counts[0]} seed" + ("s" if counts[0] != 1 else "")
    return f"{counts[0]}–{counts[-1]} seeds (cells with fewer seeds are marked n=k)"


def _ci_phrase(df: pd.DataFrame) -> str:
    """Which cells resample questions too (two-way bootstrap) and which resample seeds only."""
    both = df[df["ci"] == "seeds x questions"]
    if both.empty:
        return " (seeds resampled; exact enumeration for ≤ 6 seeds)"
    counts = sorted(set(both["n_questions"].astype(int)))
    q = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    seed_only = sorted(set(df[df["ci"] == "seeds"]["metric"]))
    rest = f"; {', '.join(seed_only)}: seeds only (one value per run)" if seed_only else ""
    noun = "question" if counts == [1] else "questions"
    return f" and {q} {noun} per split (seeds and questions resampled independently, 10,000 draws){rest}"


def header(df: pd.DataFrame, records: list[dict], task: str, bench_log: dict | None = None) -> str:
    """Provenance block: what was run, on what, scored by whom, from which commit."""
    seeds = sorted({int(r["seed"]) for r in records})
    cfg = records[0].get("config", {}) or {}
    versions: dict[str, list[str]] = {}
    for r in records:
        for pkg, version in (r.get("versions") or {}).items():
            versions.setdefault(pkg, [])
            if version not in versions[pkg]:
                versions[pkg].append(version)
    lines = [
        f"# Leaderboard: {task}",
        "",
        f"- policy model: {', '.join(_unique(records, 'model'))}",
        f"- log-likelihood scored by: {', '.join(_unique(records, 'scoring_model'))}",
        f"- data: {', '.join(_unique(records, 'data'))}",
        f"- profile: {', '.join(_unique(records, 'profile'))}",
        f"- seeds: {', '.join(map(str, seeds))}",
        f"- git commit(s): {', '.join(_unique(records, 'git_commit'))}",
    ]
    evaluation = []
    if cfg.get("eval_samples") is not None:
        evaluation.append(f"{cfg['eval_samples']} samples per question")
    if cfg.get("eval_temperature") is not None:
        evaluation.append(f"temperature {cfg['eval_temperature']}")
    evaluation.append(questions_per_split(records, cfg))
    if evaluation:
        lines.append(f"- evaluation: {', '.join(evaluation)} (methods may override; see each run's config.json)")
    budget = training_budget(records)
    if budget:
        lines.append(f"- training budget: {budget}")
    compute = compute_cost(records)
    if compute:
        lines.append(f"- compute: {compute}")
    wall = bench_wall_time(records, bench_log)
    if wall:
        lines.append(f"- bench wall time: {wall}")
    if versions:
        shown = ", ".join(f"{k} {'/'.join(v)}" for k, v in versions.items() if v != ["not installed"])
        lines.append(f"- packages: {shown}")
    lines.append(f"- cells: mean and 95% percentile-bootstrap CI, written as mean [lo, hi], over {_seed_phrase(df)}"
                 f"{_ci_phrase(df)}; deterministic rows (no sampling, no training) run once")
    return "\n".join(lines) + "\n"


def questions_per_split(records: list[dict], cfg: dict) -> str:
    """How many questions each split was scored on, counted in the records (the profile's cap says only the
    most: rng has one prompt under a cap of 100)."""
    counts = {split: len(q.get("ids") or []) for r in records for split, q in (r.get("per_question") or {}).items()}
    if counts:
        sizes = sorted(set(counts.values()))
        if len(sizes) == 1:
            return f"{sizes[0]} question{'s' if sizes[0] != 1 else ''} per split"
        return "questions per split: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    questions = cfg["eval_questions"] if "eval_questions" in cfg else (cfg.get("profile") or {}).get("eval_questions")
    return f"{questions if questions else 'all'} questions per split"


def compute_cost(records: list[dict]) -> str:
    """What the table cost to make: the runs' summed wall time (training and evaluation, model loads excluded)
    and the machines, so a reader can tell what re-running it takes."""
    timed = [r["wall_time_s"] for r in records if r.get("wall_time_s") is not None]
    if not timed:
        return ""
    machines = sorted({f"{m['cpu_count']} cores, {m['torch_threads']} torch thread(s) per run"
                       for r in records if (m := r.get("machine"))})
    where = f" on {'; '.join(machines)}" if machines else ""
    return f"{len(timed)} runs, {sum(timed) / 60:.0f} min of run wall time in all (summed over runs){where}"


def bench_wall_time(records: list[dict], log: dict | None) -> str:
    """The last `bench`'s start-to-finish wall time, when it ran runs of this table (its bench.json); says how
    many of the table's runs it ran and the jobs it ran them in."""
    try:
        table = {(r.get("method"), r.get("seed")) for r in records}
        ran = {tuple(x) for x in log["ran"]} & table
        if not ran:
            return ""
        who = "every run" if ran == table else f"{len(ran)} of the {len(table)} runs (the others kept from before)"
        minutes = log["wall_time_s"] / 60
        return (f"{minutes:.{0 if minutes >= 10 else 1}f} min from start to table for {who} (`gfnbench bench`, "
                f"{log['jobs']} job(s) x {log['torch_threads_per_job']} torch thread(s) on {log['cores']} cores, "
                f"started {log['started_utc']})")
    except (KeyError, TypeError):       # no log, or one written by hand: the table says nothing of it
        return ""


def training_budget(records: list[dict]) -> str:
    """What each trained method was given, from its record's `budget` (written by `Method.budget()`), so unequal
    budgets are visible without the table knowing any method."""
    parts = {}
    for r in records:
        budget = r.get("budget")
        if budget:
            parts[r["method"]] = f"{budget['summary']} ({budget['reward_evaluations']} reward evaluations)"
        elif r.get("config", {}).get("method", {}).get("train_steps") is not None or "train_curve" in r:
            parts[r["method"]] = "not recorded (the record predates budgets)"
    return "; ".join(f"{k}: {v}" for k, v in parts.items())


DEFAULT_DIRECTIONS = {"accuracy": "higher", "rationale_accuracy": "higher", "valid": "higher", "bleu4": "higher",
                      "gleu": "higher", "bertscore_f1": "higher", "diversity": "higher", "distinct_1": "higher",
                      "distinct_2": "higher", "logp_ref": "higher", "logp_ref_max": "higher"}


def metric_direction(metric: str, records: list[dict]) -> str | None:
    """"higher"/"lower" (is better) from the records' task, else the defaults; None when nobody says."""
    for r in records:
        direction = (r.get("metric_directions") or {}).get(metric)
        if direction:
            return direction
    if metric.startswith("pass@"):
        return "higher"
    return DEFAULT_DIRECTIONS.get(metric)


def metric_heading(metric: str, records: list[dict]) -> str:
    direction = metric_direction(metric, records)
    if direction in ("higher", "lower"):
        return f"{metric} ({'↑' if direction == 'higher' else '↓'} {direction} is better)"
    return f"{metric} ({direction})" if direction else metric


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_markdown(df: pd.DataFrame, records: list[dict], task: str,
                    method_order: Sequence[str] | None = None, bench_log: dict | None = None) -> str:
    """Header, then one table per metric: rows = methods, columns = splits."""
    order = _ordered([r["method"] for r in records], method_order)
    parts = [header(df, records, task, bench_log)]
    for metric in _ordered(df["metric"]):
        methods, splits, cells, dec, max_n = _metric_table(df, metric, order)
        lines = [f"## {_md_escape(metric_heading(metric, records))}", "",
                 "| method | " + " | ".join(map(_md_escape, splits)) + " |",
                 "|---|" + "---|" * len(splits)]
        for m in methods:
            row = []
            for s in splits:
                c = cells.get((m, s))
                if c is None:
                    row.append(MISSING)
                    continue
                text = format_cell(c.mean, c.lo, c.hi, dec)
                row.append(text + (f" (n={c.n_seeds})" if c.n_seeds < max_n else ""))
            lines.append(f"| {_md_escape(m)} | " + " | ".join(row) + " |")
        parts.append("\n" + "\n".join(lines) + "\n")
    return "".join(parts)


# --------------------------------------------------------------------------- csv / latex

def render_csv(df: pd.DataFrame) -> str:
    """The long table at full precision, for people who want to recompute or re-plot."""
    return df.to_csv(index=False)


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Method and split names go into text mode; escape what LaTeX would interpret."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def render_latex(df: pd.DataFrame, method_order: Sequence[str] | None = None) -> str:
    """One booktabs tabular per metric; cells are $mean_{\\,[lo,hi]}$ (^{n=k} if fewer seeds). No jinja2 needed."""
    out = ["% mean with 95% percentile-bootstrap CI over seeds; requires \\usepackage{booktabs}\n"]
    for metric in _ordered(df["metric"]):
        methods, splits, cells, dec, max_n = _metric_table(df, metric, method_order)
        out.append(f"\n% {latex_escape(metric)}\n\\begin{{tabular}}{{l{'c' * len(splits)}}}\n\\toprule\n")
        out.append("method & " + " & ".join(latex_escape(s) for s in splits) + " \\\\\n\\midrule\n")
        for m in methods:
            row = []
            for s in splits:
                c = cells.get((m, s))
                if c is None:
                    row.append("--")
                    continue
                few = f"^{{n={c.n_seeds}}}" if c.n_seeds < max_n else ""
                row.append(f"${c.mean:.{dec}f}_{{\\,[{c.lo:.{dec}f},\\,{c.hi:.{dec}f}]}}{few}$")
            out.append(latex_escape(m) + " & " + " & ".join(row) + " \\\\\n")
        out.append("\\bottomrule\n\\end{tabular}\n")
    return "".join(out)


# --------------------------------------------------------------------------- plot

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
    methods, splits, cells, _, _ = _metric_table(df, metric, order)
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
    for method in _ordered(curves, order):
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
    xs, ys = _lookup(df[df["metric"] == x]), _lookup(df[df["metric"] == y])
    splits = _ordered(df[df["metric"] == x]["split"])
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
    order = _ordered([r["method"] for r in records], method_order)
    metrics = _ordered(df["metric"])
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
    task = ", ".join(_unique(records, "task"))
    fig.suptitle(f"{task} — policy model: {', '.join(_unique(records, 'model'))}", fontsize=10)
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
    for i, method in enumerate(_ordered(curves, method_order)):
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
    task = ", ".join(_unique(records, "task"))
    fig.suptitle(f"{task}: learning curves (mean over seeds, band = seed range) — "
                 f"{', '.join(_unique(records, 'model'))}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return save_png(fig, Path(path))


# --------------------------------------------------------------------------- entry point

def _mixed(records: list[dict], key: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for r in records:
        groups.setdefault(str(r.get(key)), []).append(f"{r['method']}/seed{r['seed']}")
    return groups


def check_consistent(records: list[dict], results_dir: str | Path) -> None:
    """One policy model and one profile per table: mixing them would average incomparable numbers."""
    for key in ("model", "profile"):
        groups = _mixed(records, key)
        if len(groups) > 1:
            listing = "; ".join(f"{value!r}: {', '.join(runs)}" for value, runs in groups.items())
            raise ValueError(f"runs under {results_dir} mix {len(groups)} different {key}s ({listing}). "
                             f"Keep one {key} per results folder: use a different --results_dir for each.")


def write_leaderboard(results_dir: str | Path, task: str, out_dir: str | Path | None = None,
                      method_order: Sequence[str] | None = None) -> list[Path]:
    """Read the task's runs and write <task>.md, .csv, .tex and .png atomically; returns their paths."""
    records = read_runs(results_dir, task)
    if not records:
        raise ValueError(f"no run records under {Path(results_dir) / 'runs' / task}: produce them with "
                         f"`gfnbench bench --task {task}` (or `gfnbench run --task {task} --method ... --seed ...`)")
    check_consistent(records, results_dir)
    df = summarize(records)
    out = check_writable(out_dir if out_dir is not None else results_dir)
    names = [f"{task}{ext}" for ext in (".md", ".csv", ".tex", ".png")]
    with staged_table(out, names + [f"{task}_curves.png"]) as stage:
        md, csv, tex, png = (stage / name for name in names)
        atomic_write_text(md, render_markdown(df, records, task, method_order, read_bench_log(results_dir, task)))
        atomic_write_text(csv, render_csv(df))
        atomic_write_text(tex, render_latex(df, method_order))
        plot(df, records, png, method_order)
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
