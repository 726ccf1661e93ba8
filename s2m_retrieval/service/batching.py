"""Dynamic batching of sketch queries: those that arrive within `batch_wait_ms` of each other share one forward.

A query joins the pending list and asks the query pool for a drain of its own. A drain that finds its query taken
by an earlier batch returns at once; else it collects the oldest pending queries (up to `max_batch`, waiting at
most `batch_wait_ms` after the oldest arrived, or not at all when the pool was busy and they have waited
already), until a batch has taken its query. A batch decodes its sketches, runs E, H, G and the query code once
for each group of the same refinement steps T and the same need of x_hat (`RetrievalEngine.encode_sketches`: a
query that neither re-ranks nor shows x_hat runs E alone), then FAISS, the re-rank and the fused score per query
with its own options (`rank_sketch`). Every step that can fail for one query fails
only that query's future: an unreadable or blank sketch, a bad filter; a forward that fails for a whole group is
run again a sketch at a time, so only the sketch it fails for gets the error. One drain collects at a time, so
that concurrent drains do not split what arrived together; the others compute the batches already taken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from s2m_retrieval.errors import S2MError

log = logging.getLogger(__name__)
MAX_BATCH = 64                # the most --max-batch may ask for
MAX_BATCH_WAIT_MS = 1000


class Stopping(S2MError):
    """The service shut down before a query's batch ran (HTTP 503, retry)."""


@dataclass
class SketchQuery:
    """One request's sketch (the uploaded bytes), its resolved T, whether it wants x_hat, its per-query options."""

    data: bytes
    steps: int
    options: dict                          # rank_sketch's k, n_candidates, alpha, where, ... and note
    x_hat: bool = True                     # False: no re-rank, no picture (E alone, see encode_sketches)
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    taken: bool = False                    # a batch holds it (or it was cancelled, or refused at shutdown)


class SketchBatcher:
    """Pending sketch queries and the drains that answer them a batch at a time; `decode` turns a query's bytes
    into a checked grey sketch (and raises the query's own error)."""

    def __init__(self, engine, decode: Callable[[bytes], np.ndarray], max_batch: int, wait_ms: int,
                 observe_batch: Callable[[int], None]) -> None:
        self.engine = engine
        self.decode = decode
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1e3
        self.observe_batch = observe_batch
        self._pending: deque[SketchQuery] = deque()
        self._changed = threading.Condition()
        self._collecting = threading.Lock()

    def add(self, query: SketchQuery) -> Future:
        """Queue a query; its future gets the Result (or its error) once a drain has run it."""
        with self._changed:
            self._pending.append(query)
            self._changed.notify_all()
        return query.future

    def drain(self, query: SketchQuery) -> None:
        """On a query thread: answer batches of the oldest pending queries until one has taken `query` (nothing
        when an earlier drain's batch has). FIFO, so that queries behind it on the pool are not overtaken by
        whole batches of newer ones."""
        while True:
            with self._collecting:
                batch = [] if query.taken else self._collect()
            if not batch:
                return
            self._answer(batch)

    def close(self) -> None:
        """Fail the queries still pending (the service is stopping); drains waiting for more return."""
        with self._changed:
            left = list(self._pending)
            self._pending.clear()
            for query in left:
                query.taken = True
            self._changed.notify_all()
        for query in left:
            if query.future.set_running_or_notify_cancel():
                query.future.set_exception(Stopping("the service is stopping; retry in a moment"))

    def _collect(self) -> list[SketchQuery]:
        """Up to max_batch pending queries, once max_batch are there or the oldest has waited wait_s; those
        whose request went away (a cancelled future) are dropped."""
        with self._changed:
            if not self._pending:
                return []
            deadline = self._pending[0].arrived + self.wait_s
            while len(self._pending) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
                if not self._pending:  # closed meanwhile
                    return []
            taken = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
            for query in taken:
                query.taken = True
        return [q for q in taken if q.future.set_running_or_notify_cancel()]

    def _answer(self, batch: list[SketchQuery]) -> None:
        """Decode each sketch, one forward per group of the same T and need of x_hat, then each query ranked on its
        own."""
        groups: dict[tuple[int, bool], list[tuple[SketchQuery, np.ndarray]]] = {}
        for query in batch:
            try:
                groups.setdefault((query.steps, query.x_hat), []).append((query, self.decode(query.data)))
            except Exception as exc:  # noqa: BLE001 - the query's own error, raised in its request
                query.future.set_exception(exc)
        for (steps, x_hat), group in groups.items():
            self._run(steps, x_hat, group)

    def _run(self, steps: int, x_hat: bool, group: list[tuple[SketchQuery, np.ndarray]]) -> None:
        try:
            coded = self.engine.encode_sketches([grey for _, grey in group], steps, x_hat=x_hat)
        except Exception as exc:  # noqa: BLE001
            if len(group) > 1:
                log.warning("a batch of %d sketches failed (%s); running them one at a time", len(group), exc)
                for one in group:
                    self._run(steps, x_hat, [one])
            else:
                group[0][0].future.set_exception(exc)
            return
        self.observe_batch(len(group))
        for (query, _), code in zip(group, coded):
            try:
                query.future.set_result(self.engine.rank_sketch(code, **query.options))
            except Exception as exc:  # noqa: BLE001
                query.future.set_exception(exc)
