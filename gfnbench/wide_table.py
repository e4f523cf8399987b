"""The paper table: one wide table per task, rows = methods in labels.METHOD_ORDER, columns = the task's headline
metrics x its evaluation splits, with human names and arrows. The best cell of each column is bold and every cell
whose CI overlaps the best one's is underlined, so a reader sees at a glance which differences the CIs support.
Rendered to Markdown and to LaTeX (booktabs) from one model of the table, so the two always agree."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from gfnbench.cells import (
    CELL_STYLES,
    MISSING,
    NOT_APPLICABLE,
    cells_by_key,
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
from gfnbench.labels import FLOOR_SUFFIX, is_floor, labelled, metric_label

BEST, OVERLAP = "best", "overlap"


@dataclass(frozen=True)
class Column:
    metric: str
    split: str
    direction: str | None


@dataclass(frozen=True)
class Entry:
    """One cell: a summary row (mean, lo, hi, n_seeds) with its mark, or a reason it does not apply, or neither
    (the records hold no value and say nothing)."""
    row: object | None = None
    mark: str = ""
    na: str | None = None


def headline_metrics(df: pd.DataFrame, records: list[dict], declared: Sequence[str] | None) -> list[str]:
    """The task's declared headline metrics that the records hold, in its order; when it declares none (or none
    are present), every metric with a direction. A metric with a perfect-sampler floor (tv_sampled) and the floor
    itself stay out: a sampled distance is read against its floor, which the full tables print beside it."""
    present = ordered(df["metric"])
    eligible = [m for m in present if not is_floor(m, present) and f"{m}{FLOOR_SUFFIX}" not in present]
    chosen = [m for m in (declared or ()) if m in eligible]
    if chosen:
        return chosen
    return [m for m in eligible if metric_direction(m, records) in ("higher", "lower")]


def wide_columns(df: pd.DataFrame, records: list[dict], metrics: Sequence[str]) -> list[Column]:
    """metric x split, metric-major, for every pair the records hold a value of."""
    held = set(zip(df["metric"], df["split"]))
    return [Column(m, s, metric_direction(m, records)) for m in metrics for s in ordered(df["split"])
            if (m, s) in held]


def column_marks(cells: dict[str, object], direction: str | None, places: int) -> dict[str, str]:
    """method -> BEST for the best mean (and any that prints the same at `places` decimals), OVERLAP for a cell
    whose [lo, hi] meets the best cell's; no marks when the metric has no better direction."""
    if direction not in ("higher", "lower") or not cells:
        return {}
    pick = max if direction == "higher" else min
    best = pick(cells.values(), key=lambda c: c.mean)
    marks = {}
    for method, c in cells.items():
        if f"{c.mean:.{places}f}" == f"{best.mean:.{places}f}":
            marks[method] = BEST
        elif c.lo <= best.hi and c.hi >= best.lo:
            marks[method] = OVERLAP
    return marks


def build(df: pd.DataFrame, records: list[dict], rows: Sequence[str], metrics: Sequence[str],
          ) -> tuple[list[Column], dict[tuple[str, int], Entry], dict[str, int], dict[str, int]]:
    """(columns, {(method, column index): entry}, decimals per metric, most seeds per metric)."""
    columns = wide_columns(df, records, metrics)
    na = na_reasons(records)
    places = {m: decimals(df[df["metric"] == m]) for m in metrics}
    most = {m: int(df[df["metric"] == m]["n_seeds"].max()) for m in metrics if (df["metric"] == m).any()}
    entries: dict[tuple[str, int], Entry] = {}
    for k, col in enumerate(columns):
        cells = cells_by_key(df[df["metric"] == col.metric])
        held = {m: cells[(m, col.split)] for m in rows if (m, col.split) in cells}
        marks = column_marks(held, col.direction, places[col.metric])
        for method in rows:
            if method in held:
                entries[(method, k)] = Entry(row=held[method], mark=marks.get(method, ""))
            else:
                entries[(method, k)] = Entry(na=na.get((method, col.metric)))
    return columns, entries, places, most


def footnotes(columns: list[Column], entries: dict[tuple[str, int], Entry], rows: Sequence[str]) -> list[str]:
    """One line per reason of the n/a cells, naming its columns and rows (a row n/a in every exact column for one
    reason is one line, not one per column); then what "–" means, when it is used."""
    per_row: dict[tuple[str, str], list[str]] = {}
    missing = False
    for method in rows:
        for k, col in enumerate(columns):
            entry = entries[(method, k)]
            if entry.row is None and entry.na is not None:
                labels = per_row.setdefault((method, entry.na), [])
                if metric_label(col.metric) not in labels:
                    labels.append(metric_label(col.metric))
            missing |= entry.row is None and entry.na is None
    grouped: dict[tuple[tuple[str, ...], str], list[str]] = {}
    for (method, reason), labels in per_row.items():
        grouped.setdefault((tuple(labels), reason), []).append(method)
    lines = [f"{NOT_APPLICABLE}: {', '.join(labels)} for {', '.join(methods)}: {reason}"
             for (labels, reason), methods in grouped.items()]
    if missing:
        lines.append(f"{MISSING}: the row's records hold no value for this column (and give no reason)")
    return lines


def _seed_note(entry: Entry, most: int) -> str:
    return f" (n={entry.row.n_seeds})" if entry.row.n_seeds < most else ""


# --------------------------------------------------------------------------- markdown

def caption(style: str) -> str:
    """What the cells and the marks mean, above the table."""
    return (f"Cells: {CELL_STYLES[style]} (95% CI, as in the header); **bold**: the best mean of each column "
            f"(and any printing the same); <u>underlined</u>: a cell whose CI overlaps the best cell's CI. Every "
            f"metric and split, in full, is in the tables below.")


def render_wide_markdown(df: pd.DataFrame, records: list[dict], rows: Sequence[str], metrics: Sequence[str],
                         style: str = "ci") -> str:
    """"## Headline metrics", a caption, the table and its footnotes ("" when there is no column)."""
    columns, entries, places, most = build(df, records, rows, metrics)
    if not columns:
        return ""
    one_split = len({c.split for c in columns}) == 1
    heads = [labelled(c.metric, c.direction) + ("" if one_split else f" ({c.split})") for c in columns]
    lines = ["## Headline metrics", "", caption(style), "",
             "| method | " + " | ".join(map(md_escape, heads)) + " |", "|---|" + "---|" * len(columns)]
    for method in rows:
        texts = []
        for k, col in enumerate(columns):
            entry = entries[(method, k)]
            if entry.row is None:
                texts.append(NOT_APPLICABLE if entry.na is not None else MISSING)
                continue
            c = entry.row
            text = format_cell(c.mean, c.lo, c.hi, places[col.metric], style)
            text = {BEST: f"**{text}**", OVERLAP: f"<u>{text}</u>"}.get(entry.mark, text)
            texts.append(text + _seed_note(entry, most[col.metric]))
        lines.append(f"| {md_escape(method)} | " + " | ".join(texts) + " |")
    notes = footnotes(columns, entries, rows)
    if notes:
        lines += [""] + [f"- {md_escape(n)}" for n in notes]
    return "\n" + "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- latex

def _latex_head(columns: list[Column]) -> list[str]:
    """One heading row when there is one split; else metric names over their splits, with cmidrules."""
    if len({c.split for c in columns}) == 1:
        return ["method & " + " & ".join(latex_escape(labelled(c.metric, c.direction)) for c in columns) + " \\\\"]
    groups: list[tuple[Column, int]] = []
    for c in columns:
        if groups and groups[-1][0].metric == c.metric:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((c, 1))
    tops, rules, start = [], [], 2
    for c, span in groups:
        tops.append(f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(labelled(c.metric, c.direction))}}}")
        rules.append(f"\\cmidrule(lr){{{start}-{start + span - 1}}}")
        start += span
    return ["method & " + " & ".join(tops) + " \\\\", " ".join(rules),
            " & " + " & ".join(latex_escape(c.split) for c in columns) + " \\\\"]


def render_wide_latex(df: pd.DataFrame, records: list[dict], rows: Sequence[str], metrics: Sequence[str],
                      style: str = "ci") -> str:
    """The same table as a booktabs tabular: best cells \\boldmath, overlapping ones \\underline, n/a reasons as
    footnote lines after it ("" when there is no column)."""
    columns, entries, places, most = build(df, records, rows, metrics)
    if not columns:
        return ""
    out = [f"% headline metrics: {latex_comment(CELL_STYLES[style])} (95% CI); bold = best mean per column, "
           f"underlined = CI overlaps the best cell's; requires \\usepackage{{booktabs}}",
           f"\\begin{{tabular}}{{l{'c' * len(columns)}}}", "\\toprule", *_latex_head(columns), "\\midrule"]
    for method in rows:
        texts = []
        for k, col in enumerate(columns):
            entry = entries[(method, k)]
            if entry.row is None:
                texts.append(NOT_APPLICABLE if entry.na is not None else "--")
                continue
            c = entry.row
            few = f"^{{n={c.n_seeds}}}" if c.n_seeds < most[col.metric] else ""
            body = f"${latex_cell(c.mean, c.lo, c.hi, places[col.metric], style)}{few}$"
            texts.append({BEST: f"{{\\boldmath{body}}}", OVERLAP: f"\\underline{{{body}}}"}.get(entry.mark, body))
        out.append(latex_escape(method) + " & " + " & ".join(texts) + " \\\\")
    out += ["\\bottomrule", "\\end{tabular}"]
    out += [f"\\par{{\\footnotesize {latex_escape(n)}}}" for n in footnotes(columns, entries, rows)]
    return "\n".join(out) + "\n"
