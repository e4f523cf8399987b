"""Metrics shared by every task. Each one is tested against an independently worked-out value."""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence


def majority_vote(predictions: Sequence[Hashable | None]) -> Hashable | None:
    """Most frequent non-empty prediction; ties go to the one seen first (as the paper's evaluation).

    Unparseable samples (None) do not vote, so one valid answer among nine failures still counts.
    """
    votes = [p for p in predictions if p is not None]
    if not votes:
        return None
    counts = Counter(votes)
    best = max(counts.values())
    return next(p for p in votes if counts[p] == best)


def mean(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("mean of no values: the split has no examples")
    return float(sum(values) / len(values))
