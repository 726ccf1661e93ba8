"""Retrieval metrics over ranked lists of archive ids: instance level (one target) and category level (labels).

Conventions, for every function here:
- `ranked` is one query's result list, best first; it may hold fewer than k ids (a filter, a small archive).
  A missing position counts as a miss: acc@k and P@k divide by k, not by the length of the list.
- Ties are the ranker's business: a ranked list is already a strict order, so ties never reach these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def hit_rank(ranked: Sequence, target) -> int | None:
    """1-based position of `target` in `ranked`, None when absent."""
    for i, item in enumerate(ranked):
        if item == target:
            return i + 1
    return None


def accuracy_at(ranks: Sequence[int | None], k: int) -> float:
    """Share of queries whose target is within the top k (acc@k, also instance recall@k)."""
    if not ranks:
        return float("nan")
    return float(np.mean([r is not None and r <= k for r in ranks]))


def mean_reciprocal_rank(ranks: Sequence[int | None], cutoff: int | None = None) -> float:
    """Mean of 1/rank of the target (0 when absent or past `cutoff`)."""
    if not ranks:
        return float("nan")
    return float(np.mean([0.0 if r is None or (cutoff is not None and r > cutoff) else 1.0 / r for r in ranks]))


def precision_at(relevant: Sequence[bool], k: int) -> float:
    """P@k of one query: relevant results among the first k, over k (a short list counts its gaps as misses)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return float(np.sum(np.asarray(relevant[:k], dtype=bool))) / k


def average_precision_at(relevant: Sequence[bool], k: int, n_relevant: int) -> float:
    """AP@k of one query: sum of P@i at each relevant position i <= k, over min(k, n_relevant).

    `n_relevant` is the number of relevant items in the whole archive; a query with none has AP 0 by convention
    (it cannot be answered well), so callers should count it separately.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rel = np.asarray(relevant[:k], dtype=bool)
    denominator = min(k, n_relevant)
    if denominator == 0:
        return 0.0
    hits = np.cumsum(rel)
    positions = np.flatnonzero(rel) + 1
    return float(np.sum(hits[rel] / positions) / denominator)


def recall_overlap(approximate: Sequence[Sequence[int]], exact: Sequence[Sequence[int]], k: int) -> float:
    """Index recall@k: the mean share of the exact search's top k that the approximate search also returns."""
    if not exact:
        return float("nan")
    shares = []
    for a, e in zip(approximate, exact, strict=True):
        truth = set(list(e)[:k])
        if truth:
            shares.append(len(truth & set(list(a)[:k])) / len(truth))
    return float(np.mean(shares)) if shares else float("nan")


def percentile_ms(values_ms: Sequence[float], q: float) -> float:
    """The q-th percentile of latencies in ms (nan for none)."""
    return float(np.percentile(values_ms, q)) if len(values_ms) else float("nan")
