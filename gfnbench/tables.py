"""Leaderboard tables from the summary (stats.summarize): Markdown with a provenance header, CSV (long format,
full precision) and LaTeX (one ``tabular`` per metric, needs ``booktabs``). Each cell is "mean [lo, hi]"."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from gfnbench.precision import record_precision

MISSING = "–"


# --------------------------------------------------------------------------- shared table helpers

def ordered(values: Iterable[str], order: Sequence[str] | None = None) -> list[str]:
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


def cells_by_key(sub: pd.DataFrame) -> dict[tuple[str, str], pd.Series]:
    """(method, split) -> summary row, for one metric's rows."""
    return {(row.method, row.split): row for row in sub.itertuples(index=False)}


def format_cell(mean: float, lo: float, hi: float, decimals: int = 3) -> str:
    """"0.312 [0.280, 0.350]": mean and CI bounds."""
    return f"{mean:.{decimals}f} [{lo:.{decimals}f}, {hi:.{decimals}f}]"


def metric_table(df: pd.DataFrame, metric: str, method_order: Sequence[str] | None):
    """(methods, splits, {(method, split): row}, decimals, max_n) for one metric."""
    sub = df[df["metric"] == metric]
    return (ordered(sub["method"], method_order), ordered(sub["split"]), cells_by_key(sub), _decimals(sub),
            int(sub["n_seeds"].max()))


# --------------------------------------------------------------------------- markdown

def unique_values(records: list[dict], key: str) -> list[str]:
    """The records' distinct values of `key`, in order of first appearance ("unknown" when absent)."""
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
        f"- policy model: {', '.join(unique_values(records, 'model'))}",
        f"- log-likelihood scored by: {', '.join(unique_values(records, 'scoring_model'))}",
        f"- data: {', '.join(unique_values(records, 'data'))}",
        f"- profile: {', '.join(unique_values(records, 'profile'))}",
        f"- precision: {precision_phrase(records)}",
        f"- seeds: {', '.join(map(str, seeds))}",
        f"- git commit(s): {', '.join(unique_values(records, 'git_commit'))}",
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


def precision_phrase(records: list[dict]) -> str:
    """The table's precision (precision.py's names), or each row's when the runs mix them (a leaderboard built
    with --allow_mixed_precision true)."""
    per_row: dict[str, list[str]] = {}
    for r in records:
        names = per_row.setdefault(str(r.get("method")), [])
        if record_precision(r) not in names:
            names.append(record_precision(r))
    every = {p for names in per_row.values() for p in names}
    if len(every) == 1:
        return every.pop()
    return "mixed, per row: " + "; ".join(f"{m} {', '.join(names)}" for m, names in per_row.items())


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


def skipped_line(skipped: Sequence[str]) -> str:
    """The header's line naming the damaged records a `--skip_damaged true` table left out ("" when none)."""
    if not skipped:
        return ""
    return f"- left out (damaged records, --skip_damaged true): {'; '.join(map(_md_escape, skipped))}\n"


def render_markdown(df: pd.DataFrame, records: list[dict], task: str, method_order: Sequence[str] | None = None,
                    bench_log: dict | None = None, skipped: Sequence[str] = ()) -> str:
    """Header (with the damaged records left out, if any), then one table per metric: rows = methods, columns =
    splits."""
    order = ordered([r["method"] for r in records], method_order)
    parts = [header(df, records, task, bench_log) + skipped_line(skipped)]
    for metric in ordered(df["metric"]):
        methods, splits, cells, dec, max_n = metric_table(df, metric, order)
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
    for metric in ordered(df["metric"]):
        methods, splits, cells, dec, max_n = metric_table(df, metric, method_order)
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
