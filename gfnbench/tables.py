"""Leaderboard tables from the summary (stats.summarize): Markdown with a provenance header, CSV (long format,
full precision) and LaTeX (booktabs). The Markdown and LaTeX open with the task's wide headline table
(wide_table.py), then give every metric its own table: rows = methods (labels.row_order), columns = splits."""
from __future__ import annotations

import re
from collections.abc import Sequence

import pandas as pd

from gfnbench.cells import (
    CELL_STYLES,
    MISSING,
    NOT_APPLICABLE,
    cells_by_key,
    check_cell_style,
    decimals,
    format_cell,
    latex_cell,
    latex_comment,
    latex_escape,
    md_escape,
    metric_direction,
    na_reasons,
    ordered,
)
from gfnbench.labels import FLOOR_SUFFIX, is_floor, metric_label, row_order
from gfnbench.precision import record_precision
from gfnbench.wide_table import headline_metrics, render_wide_latex, render_wide_markdown

__all__ = ["MISSING", "cells_by_key", "format_cell", "latex_escape", "metric_direction", "metric_table", "ordered",
           "render_csv", "render_latex", "render_markdown", "unique_values"]


# --------------------------------------------------------------------------- shared table helpers

def metric_table(df: pd.DataFrame, metric: str, method_order: Sequence[str] | None):
    """(methods, splits, {(method, split): row}, decimals, max_n) for one metric, rows in labels.row_order."""
    sub = df[df["metric"] == metric]
    return (row_order(sub["method"], method_order), ordered(sub["split"]), cells_by_key(sub), decimals(sub),
            int(sub["n_seeds"].max()))


def table_metrics(df: pd.DataFrame) -> list[str]:
    """The metrics that get a table of their own: all but perfect-sampler floors (shown in their metric's
    heading instead)."""
    present = ordered(df["metric"])
    return [m for m in present if not is_floor(m, present)]


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


def header(df: pd.DataFrame, records: list[dict], task: str, bench_log: dict | None = None,
           rows: Sequence[str] | None = None, style: str = "ci") -> str:
    """Provenance block: what was run, on what, scored by whom, from which commit, with which budget."""
    seeds = sorted({int(r["seed"]) for r in records})
    cfg = records[0].get("config", {}) or {}
    versions: dict[str, list[str]] = {}
    for r in records:
        for pkg, version in (r.get("versions") or {}).items():
            versions.setdefault(pkg, [])
            if version not in versions[pkg]:
                versions[pkg].append(version)
    lines = [
        f"- policy model: {', '.join(unique_values(records, 'model'))}",
        f"- log-likelihood scored by: {', '.join(unique_values(records, 'scoring_model'))}",
        f"- data: {', '.join(unique_values(records, 'data'))}",
        f"- profile: {', '.join(unique_values(records, 'profile'))}",
        f"- precision: {precision_phrase(records)}",
        f"- machine: {machine_phrase(records)}",
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
    budget = budget_lines(records, rows or row_order(r["method"] for r in records))
    if budget:
        lines.append("- budget per row (reward evaluations: optimizer steps x samples per step, as planned; then what "
                     "the run counted: reward calls in training, reward calls at test time, labelled items used):")
        lines += [f"  - {line}" for line in budget]
    compute = compute_cost(records)
    if compute:
        lines.append(f"- compute: {compute}")
    wall = bench_wall_time(records, bench_log)
    if wall:
        lines.append(f"- bench wall time: {wall}")
    if versions:
        shown = ", ".join(f"{k} {'/'.join(v)}" for k, v in versions.items() if v != ["not installed"])
        lines.append(f"- packages: {shown}")
    lines.append(f"- cells: mean and 95% percentile-bootstrap CI, written as {CELL_STYLES[style]}, over "
                 f"{_seed_phrase(df)}{_ci_phrase(df)}; deterministic rows (no sampling, no training) run once")
    return "\n".join(lines) + "\n"


def machine_phrase(records: list[dict]) -> str:
    """Cores and the bf16-relevant CPU flags of the hosts the runs ran on (what bf16 speed depends on), each
    distinct host once; records made before the flags were kept say so."""
    hosts = []
    for r in records:
        machine = r.get("machine") or {}
        flags = machine.get("host_cpu_flags")
        host = (f"{machine.get('cpu_count', '?')} cores, bf16 CPU flags: "
                f"{', '.join(flags) or 'none'}" if flags is not None else "not recorded")
        if host not in hosts:
            hosts.append(host)
    return "; ".join(hosts)


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


COUNTED_FIELDS = (("reward_calls", "reward calls"), ("test_reward_calls", "test-time reward calls"),
                  ("labelled_items", "labelled items"))


def counted(values: list) -> str:
    """A counted budget field over a row's runs (None where a run's record lacks it): one number, a range over
    seeds, or "not counted"; never a number the records do not hold."""
    have = [v for v in values if v is not None]
    if not have:
        return "not counted"
    lo, hi = min(have), max(have)
    text = f"{lo}" if lo == hi else f"{lo}–{hi} over seeds"
    missing = len(values) - len(have)
    return text + (f" (not counted in {missing} of {len(values)} runs)" if missing else "")


def _detail(budgets: list[dict]) -> str:
    """" (gold rationales: 10)": what the labelled items were, from `labelled_detail`, distinct ones joined."""
    seen = list(dict.fromkeys(", ".join(f"{k}: {v}" for k, v in b["labelled_detail"].items())
                              for b in budgets if isinstance(b.get("labelled_detail"), dict)))
    return f" ({' / '.join(s for s in seen if s)})" if any(seen) else ""


def row_summary(summaries: list[str | None]) -> str:
    """One plan for a row's seeds. A warm-started run names its own seed's SFT run, so the seeds' summaries
    differ only in that folder: it is written `seed<s>` (the row's seed) rather than the last seed's number."""
    given = [x for x in summaries if x]
    if not given:
        return "no summary"
    if len(set(given)) == 1:
        return given[0]
    same_seed = {re.sub(r"\bseed\d+\b", "seed<s>", x) for x in given}
    return same_seed.pop() if len(same_seed) == 1 else f"{given[-1]} (other seeds' plans differ)"


def budget_lines(records: list[dict], rows: Sequence[str]) -> list[str]:
    """One line per row that spent a budget (trained rows; untrained ones that use labels or test-time reward),
    from its records' `budget`: the plan (summary, reward evaluations) and what the runs counted (reward calls,
    test-time reward calls, labelled items), "not counted" where a record predates a count. Trained rows
    without any budget say so; the table never needs to know a method."""
    lines = []
    for method in rows:
        runs = [r for r in records if r["method"] == method]
        budgets = [r["budget"] for r in runs if r.get("budget")]
        if not budgets:
            if any(r.get("config", {}).get("method", {}).get("train_steps") is not None or "train_curve" in r
                   for r in runs):
                lines.append(f"{method}: not recorded (the record predates budgets)")
            continue
        plan = row_summary([b.get("summary") for b in budgets])
        planned = [b["reward_evaluations"] for b in budgets if b.get("reward_evaluations") is not None]
        if planned:
            plan += f" ({counted(planned)} reward evaluations)"
        counts = [f"{name} {counted([b.get(field) for b in budgets])}" for field, name in COUNTED_FIELDS]
        lines.append(f"{method}: {plan}; " + "; ".join(counts) + _detail(budgets))
    return lines


def floor_phrase(df: pd.DataFrame, metric: str) -> str:
    """" (perfect-sampler floor 0.254)" when the records carry `<metric>_floor`: the value a sampler drawing
    exactly from the target would still score with this many samples, against which the metric is read."""
    sub = df[df["metric"] == f"{metric}{FLOOR_SUFFIX}"]
    if sub.empty:
        return ""
    places = decimals(sub)
    by_split = {s: f"{g['mean'].mean():.{places}f}" for s, g in sub.groupby("split", sort=False)}
    if len(set(by_split.values())) == 1:
        return f" (perfect-sampler floor {next(iter(by_split.values()))})"
    return " (perfect-sampler floor " + ", ".join(f"{s} {v}" for s, v in by_split.items()) + ")"


def metric_heading(metric: str, records: list[dict], df: pd.DataFrame | None = None) -> str:
    """"tv_exact: exact TV (↓ lower is better)": the identifier (as the CSV holds it), its human name, the floor
    when there is one, and which way is better."""
    label = metric_label(metric)
    name = (metric if label == metric else f"{metric}: {label}") + (floor_phrase(df, metric) if df is not None
                                                                   else "")
    direction = metric_direction(metric, records)
    if direction in ("higher", "lower"):
        return f"{name} ({'↑' if direction == 'higher' else '↓'} {direction} is better)"
    return f"{name} ({direction})" if direction else name


def skipped_line(skipped: Sequence[str]) -> str:
    """The header's line naming the damaged records a `--skip_damaged true` table left out ("" when none)."""
    if not skipped:
        return ""
    return f"- left out (damaged records, --skip_damaged true): {'; '.join(map(md_escape, skipped))}\n"


def table_rows(df: pd.DataFrame, metric: str, rows: Sequence[str], na: dict[tuple[str, str], str]) -> list[str]:
    """The rows of one metric's table: those that hold it or say why it does not apply to them."""
    held = set(df[df["metric"] == metric]["method"])
    return [m for m in rows if m in held or (m, metric) in na]


def _cell_text(c, na_reason: str | None, dec: int, max_n: int, style: str, latex: bool = False) -> str:
    if c is None:
        return NOT_APPLICABLE if na_reason is not None else ("--" if latex else MISSING)
    if latex:
        few = f"^{{n={c.n_seeds}}}" if c.n_seeds < max_n else ""
        return f"${latex_cell(c.mean, c.lo, c.hi, dec, style)}{few}$"
    return format_cell(c.mean, c.lo, c.hi, dec, style) + (f" (n={c.n_seeds})" if c.n_seeds < max_n else "")


def na_notes(metric: str, rows: Sequence[str], na: dict[tuple[str, str], str]) -> list[str]:
    """"n/a for greedy: <reason>", one per row the metric does not apply to."""
    return [f"{NOT_APPLICABLE} for {m}: {na[(m, metric)]}" for m in rows if (m, metric) in na]


def render_markdown(df: pd.DataFrame, records: list[dict], task: str, method_order: Sequence[str] | None = None,
                    bench_log: dict | None = None, skipped: Sequence[str] = (), cells: str = "ci",
                    headline: Sequence[str] | None = None) -> str:
    """Title; the wide headline table (`headline`: the task's headline_metrics; None or empty: every metric with
    a direction); the provenance header (with the damaged records left out, if any); then one table per metric:
    rows = methods, columns = splits, "n/a" with its reason where a metric does not apply to a row."""
    style = check_cell_style(cells)
    rows = row_order([r["method"] for r in records], method_order)
    na = na_reasons(records)
    wide = render_wide_markdown(df, records, rows, headline_metrics(df, records, headline), style)
    parts = [f"# Leaderboard: {task}\n", wide, "\n## Runs\n\n",
             header(df, records, task, bench_log, rows, style) + skipped_line(skipped)]
    for metric in table_metrics(df):
        _, splits, by_key, dec, max_n = metric_table(df, metric, rows)
        methods = table_rows(df, metric, rows, na)
        lines = [f"## {md_escape(metric_heading(metric, records, df))}", "",
                 "| method | " + " | ".join(map(md_escape, splits)) + " |",
                 "|---|" + "---|" * len(splits)]
        for m in methods:
            texts = [_cell_text(by_key.get((m, s)), na.get((m, metric)), dec, max_n, style) for s in splits]
            lines.append(f"| {md_escape(m)} | " + " | ".join(texts) + " |")
        notes = na_notes(metric, methods, na)
        if notes:
            lines += [""] + [f"- {md_escape(n)}" for n in notes]
        parts.append("\n" + "\n".join(lines) + "\n")
    return "".join(parts)


# --------------------------------------------------------------------------- csv / latex

def render_csv(df: pd.DataFrame) -> str:
    """The long table at full precision, for people who want to recompute or re-plot."""
    return df.to_csv(index=False)


def render_latex(df: pd.DataFrame, method_order: Sequence[str] | None = None, records: Sequence[dict] = (),
                 cells: str = "ci", headline: Sequence[str] | None = None) -> str:
    """The wide headline table (when given the records), then one booktabs tabular per metric; cells are
    $mean_{\\,[lo,hi]}$ or $mean \\pm h$ (^{n=k} if fewer seeds). No jinja2 needed."""
    style = check_cell_style(cells)
    records = list(records)
    rows = row_order(df["method"], method_order)
    na = na_reasons(records)
    out = []
    if records:
        out.append(render_wide_latex(df, records, rows, headline_metrics(df, records, headline), style))
    out.append(f"\n% every metric: {latex_comment(CELL_STYLES[style])}, 95% percentile-bootstrap CI; requires "
               f"\\usepackage{{booktabs}}\n")
    for metric in table_metrics(df):
        _, splits, by_key, dec, max_n = metric_table(df, metric, rows)
        methods = table_rows(df, metric, rows, na)
        heading = metric_heading(metric, records, df)
        out.append(f"\n% {latex_escape(heading)}\n\\begin{{tabular}}{{l{'c' * len(splits)}}}\n\\toprule\n")
        out.append("method & " + " & ".join(latex_escape(s) for s in splits) + " \\\\\n\\midrule\n")
        for m in methods:
            texts = [_cell_text(by_key.get((m, s)), na.get((m, metric)), dec, max_n, style, latex=True)
                     for s in splits]
            out.append(latex_escape(m) + " & " + " & ".join(texts) + " \\\\\n")
        out.append("\\bottomrule\n\\end{tabular}\n")
        out += [f"\\par{{\\footnotesize {latex_escape(n)}}}\n" for n in na_notes(metric, methods, na)]
    return "".join(out)
