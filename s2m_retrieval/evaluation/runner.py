"""One evaluation run: every method answers every manifest query; metrics per variant, latency per method."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from s2m_retrieval.errors import BadInputError
from s2m_retrieval.evaluation import metrics as m
from s2m_retrieval.evaluation.archive_view import ArchiveView
from s2m_retrieval.evaluation.manifest import Query


@dataclass
class Answers:
    """Per variant, every query's ranked archive ids; per method, every query's seconds; query sketches."""

    lists: dict[str, list[list[str]]] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)
    method_of: dict[str, str] = field(default_factory=dict)
    sketches: list[np.ndarray] = field(default_factory=list)


def check_targets(queries: Sequence[Query], view: ArchiveView, index_name: str) -> None:
    """Every non-empty target id must be in the index (else instance metrics would count phantom misses)."""
    known = set(view.archive_ids)
    missing = [q.target_id for q in queries if q.target_id is not None and q.target_id not in known]
    if missing:
        raise BadInputError(f"{len(missing)} target id(s) of the manifest are not in index {index_name!r} "
                            f"(e.g. {missing[0]!r}); make the queries from the indexed archive, or leave "
                            "target_id empty for held-out queries")


def run_methods(queries: Sequence[Query], methods: Sequence, progress: Callable[[int], None] | None = None
                ) -> Answers:
    """Ask every method about every query sketch."""
    from s2m_retrieval.query.engine import check_sketch, read_sketch

    answers = Answers()
    for query in queries:
        sketch = check_sketch(read_sketch(query.sketch), query.sketch)
        answers.sketches.append(sketch)
        for method in methods:
            ranked = method.rank(sketch)
            for variant, ids in ranked.lists.items():
                answers.lists.setdefault(variant, []).append(ids)
                answers.method_of[variant] = method.name
            answers.seconds.setdefault(method.name, []).append(ranked.seconds)
        if progress:
            progress(1)
    return answers


@dataclass
class Relevance:
    """Category relevance by label columns: which archive ids share a query's values, and how many of the index's
    images do (counted once per query, not once per variant)."""

    labels: dict[str, dict]
    columns: tuple[str, ...]
    n_relevant: list[int]

    @classmethod
    def of(cls, queries: Sequence[Query], view: ArchiveView, columns: tuple[str, ...]) -> Relevance:
        return cls(labels=dict(zip(view.archive_ids, view.labels)), columns=columns,
                   n_relevant=[view.count_matching(q.labels, columns) for q in queries])

    def flags(self, query: Query, ids: Sequence[str]) -> list[bool]:
        """Per result: does it share every relevance column's value with the query?"""
        return [all(self.labels[i].get(c) == query.labels.get(c) for c in self.columns) for i in ids]


def variant_metrics(lists: list[list[str]], queries: Sequence[Query], ks: Sequence[int],
                    relevance: Relevance | None) -> dict:
    """Instance metrics over queries with a target, category metrics over the relevance columns."""
    out: dict = {}
    with_target = [(q, ids) for q, ids in zip(queries, lists) if q.target_id is not None]
    if with_target:
        ranks = [m.hit_rank(ids, q.target_id) for q, ids in with_target]
        out |= {f"acc@{k}": m.accuracy_at(ranks, k) for k in ks}
        out["mrr"] = m.mean_reciprocal_rank(ranks)
        out["found"] = m.accuracy_at(ranks, max(len(ids) for _, ids in with_target))
        out["list_length"] = int(np.median([len(ids) for _, ids in with_target]))
        out["n_instance"] = len(with_target)
    if relevance is not None:
        k_max = max(ks)
        precision = {k: [] for k in ks}
        ap, no_relevant = [], 0
        for q, ids, n_rel in zip(queries, lists, relevance.n_relevant):
            if n_rel == 0:
                no_relevant += 1
                continue
            rel = relevance.flags(q, ids)
            for k in ks:
                precision[k].append(m.precision_at(rel, k))
            ap.append(m.average_precision_at(rel, k_max, n_rel))
        out |= {f"P@{k}": float(np.mean(v)) if v else float("nan") for k, v in precision.items()}
        out[f"mAP@{k_max}"] = float(np.mean(ap)) if ap else float("nan")
        out["n_category"] = len(ap)
        out["no_relevant"] = no_relevant
    return out


def precision_curve(lists: list[list[str]], queries: Sequence[Query], relevance: Relevance, k_max: int) -> list[float]:
    """Mean P@k for k = 1..k_max (queries with a relevant image in the index)."""
    curves = [[m.precision_at(relevance.flags(q, ids), k) for k in range(1, k_max + 1)]
              for q, ids, n_rel in zip(queries, lists, relevance.n_relevant) if n_rel]
    return np.mean(curves, axis=0).tolist() if curves else []
