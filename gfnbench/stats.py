"""Mean and 95% percentile-bootstrap CI of each leaderboard cell, from run records. Two bootstraps, chosen per
cell by what the records hold:

- Per-question cells (the metric is in every seed's `per_question`, on the same questions): a two-way Monte
  Carlo bootstrap (`seed_question_bootstrap`). Seeds and questions are resampled independently, 10,000 draws
  from a fixed generator seed (so a table is reproducible), each draw's value being the mean over the drawn
  seeds x drawn questions; the interval covers which questions were asked as well as training and sampling
  noise. Never enumerated: n_seeds**n_seeds x n_questions**n_questions resamples are far too many.
- Seeds-only cells (one value per run: exact metrics, records without per-question values): a percentile
  bootstrap of the mean over seeds (`bootstrap_ci`). With few seeds (n**n <= 100000, i.e. n <= 6) every one of
  the n**n equally likely resamples is enumerated, so the interval is the exact bootstrap interval and does not
  depend on a random seed; larger n uses a seeded Monte-Carlo resample. With 3 seeds this interval is narrow and
  optimistic: it describes seed spread, not a guarantee.

Percentiles use numpy's ``quantile(method="linear")`` (Hyndman & Fan type 7, numpy's default) on the resample
means, in both cases.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np
import pandas as pd

EXACT_LIMIT = 100_000
SUMMARY_COLUMNS = ["method", "split", "metric", "mean", "lo", "hi", "n_seeds", "seeds", "n_questions", "ci"]


def _resample_indices(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """All n**n index tuples when that is small (exact), else a seeded Monte-Carlo draw."""
    if n ** n <= EXACT_LIMIT:
        return np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def bootstrap_ci(values: Iterable[float], level: float = 0.95, n_resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, lo, hi): seeds-only percentile bootstrap of the mean of one value per run; exact enumeration for
    n <= 6, else `n_resamples` seeded Monte-Carlo draws (see module doc)."""
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
    """(mean, lo, hi) of a [seeds, questions] matrix: a two-way Monte Carlo percentile bootstrap, `n_resamples`
    draws (10,000 by default) from generator `seed`, each resampling seeds and questions independently (drawn as
    multinomial counts, so a draw's value is the count-weighted mean over seeds x questions). The interval covers
    which questions were asked as well as training and sampling noise; with 3 seeds and 8 questions a seeds-only
    interval would ignore the larger of the two. Not exact: the interval moves slightly with `seed`."""
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
    carry per question get the two-way Monte Carlo seed x question bootstrap (column ci = "seeds x questions");
    the rest (exact metrics, old records) the seeds-only bootstrap (ci = "seeds")."""
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
