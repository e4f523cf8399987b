"""How one leaderboard cell is written: its number format (mean [lo, hi] or mean ± half-width), its decimals,
which way its metric is better, and escaping for Markdown and LaTeX. Shared by the wide table, the per-metric
tables and the plots, so they never disagree on a number or a direction."""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

MISSING = "–"
NOT_APPLICABLE = "n/a"
CELL_STYLES = {"ci": "mean [lo, hi]", "pm": "mean ± half the CI width"}


def check_cell_style(style: str) -> str:
    """`style` when it is a known cell style; else one-line ValueError naming the choices."""
    if style not in CELL_STYLES:
        raise ValueError(f"cells must be 'ci' (mean [lo, hi]) or 'pm' (mean ± half the 95% CI width), "
                         f"got {style!r}: pass --cells ci or --cells pm")
    return style


def ordered(values: Iterable[str], order: Sequence[str] | None = None) -> list[str]:
    """Given order first, then the rest in order of first appearance: stable across reruns."""
    present = list(dict.fromkeys(values))
    head = [v for v in (order or []) if v in present]
    return head + [v for v in present if v not in head]


def decimals(sub: pd.DataFrame) -> int:
    """3 decimals, more when a metric is tiny (so 0.0004 is not printed as 0.000)."""
    mags = np.abs(sub[["mean", "lo", "hi"]].to_numpy(dtype=float))
    mags = mags[mags > 0]
    if mags.size == 0:
        return 3
    return int(max(3, min(6, -math.floor(math.log10(mags.max())) + 1)))


def cells_by_key(sub: pd.DataFrame) -> dict[tuple[str, str], pd.Series]:
    """(method, split) -> summary row, for one metric's rows."""
    return {(row.method, row.split): row for row in sub.itertuples(index=False)}


def format_cell(mean: float, lo: float, hi: float, decimals: int = 3, style: str = "ci") -> str:
    """"0.312 [0.280, 0.350]" (ci) or "0.312 ± 0.035" (pm: half the CI's width; the interval itself may be
    asymmetric, which the ci style shows)."""
    if style == "pm":
        return f"{mean:.{decimals}f} ± {(hi - lo) / 2:.{decimals}f}"
    return f"{mean:.{decimals}f} [{lo:.{decimals}f}, {hi:.{decimals}f}]"


def latex_cell(mean: float, lo: float, hi: float, decimals: int = 3, style: str = "ci") -> str:
    """The math-mode body of a cell: mean_{[lo, hi]} (ci) or mean \\pm half-width (pm)."""
    if style == "pm":
        return f"{mean:.{decimals}f} \\pm {(hi - lo) / 2:.{decimals}f}"
    return f"{mean:.{decimals}f}_{{\\,[{lo:.{decimals}f},\\,{hi:.{decimals}f}]}}"


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


def md_escape(text: str) -> str:
    """A Markdown table cell may not hold a bare '|'."""
    return str(text).replace("|", "\\|")


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "↑": r"$\uparrow$", "↓": r"$\downarrow$", "‖": r"$\|$", "π": r"$\pi$", "±": r"$\pm$",
                  "–": "--", "<": r"\textless{}", ">": r"\textgreater{}"}


def latex_escape(text: str) -> str:
    """Method, split and metric names go into text mode; escape what LaTeX would interpret, and write the few
    non-ASCII signs the names use (arrows, ‖, π) as math so pdflatex takes them."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def na_reasons(records: list[dict]) -> dict[tuple[str, str], str]:
    """(method, metric) -> why the metric does not apply to that row, from the records' `metrics_na`
    ({metric: reason}); distinct reasons of one row's seeds are joined with "; "."""
    reasons: dict[tuple[str, str], list[str]] = {}
    for r in records:
        na = r.get("metrics_na") or {}
        if not isinstance(na, dict):
            raise ValueError(f"record {r.get('method')}/seed{r.get('seed')} has metrics_na {na!r}, not an object "
                             f"{{metric: reason}}: fix or re-run that run")
        for metric, reason in na.items():
            said = reasons.setdefault((str(r["method"]), str(metric)), [])
            if str(reason) not in said:
                said.append(str(reason))
    return {key: "; ".join(said) for key, said in reasons.items()}


def latex_comment(text: str) -> str:
    """`text` for a LaTeX comment line: ASCII, so any engine reads the file."""
    return str(text).replace("±", "+/-").replace("–", "-")
