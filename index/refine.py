"""Exact re-ranking of a compressed index's candidates with the float vectors kept in the shards.

PQ codes keep RAM at ~80 bytes per vector, but their distances are approximate: the true 10 nearest are
usually among the first few hundred PQ candidates, not the first 10. A search on such an index takes
`refine` x k candidates and orders them by the exact squared L2 to the stored vectors, read row by row
from the shard files (page cache, not process memory).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def rerank_exact(queries: np.ndarray, candidates: np.ndarray, vectors_of: Callable[[np.ndarray], np.ndarray],
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidates `[Q, K']` (id -1 = none) -> the k nearest by exact squared L2: (distances, ids) `[Q, k]`.

    `vectors_of(ids)` returns the stored vectors `[n, D]` of unique, valid ids, in the order given.
    """
    queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    out_d = np.full((len(queries), k), np.inf, np.float32)
    out_i = np.full((len(queries), k), -1, np.int64)
    wanted = np.unique(candidates[candidates >= 0])
    if not len(wanted):
        return out_d, out_i
    vectors = np.asarray(vectors_of(wanted), dtype=np.float32)  # [n, D], rows follow `wanted`
    for q, row in enumerate(candidates):
        ids = np.unique(row[row >= 0])
        if not len(ids):
            continue
        diff = vectors[np.searchsorted(wanted, ids)] - queries[q]
        d2 = np.einsum("ij,ij->i", diff, diff)
        order = np.lexsort((ids, d2))[:k]  # ties go to the smaller id, so results are deterministic
        out_d[q, :len(order)], out_i[q, :len(order)] = d2[order], ids[order]
    return out_d, out_i
