"""Reader stage of index builds: hash and diff archive files against the index, decode them in batches."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from s2m_retrieval.data.archive import ArchiveEntry, ReadStats, iter_batches, read_image_size

if TYPE_CHECKING:
    from s2m_retrieval.storage.catalog import StoredVector


@dataclass(frozen=True)
class PlanItem:
    """A file to encode: new, or changed since it was indexed (`replaces`)."""

    entry: ArchiveEntry
    path: str
    sha256: str
    replaces: bool


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plan(entries: Iterable[ArchiveEntry], known: dict[str, StoredVector], stats: ReadStats,
         hashes: Mapping[str, str] | None = None) -> tuple[list[PlanItem], int]:
    """Split entries into work (new or changed files) and a count of unchanged ones skipped.

    `hashes` holds sha256s already computed elsewhere (a Ray engine), by absolute path; the others are hashed here.
    """
    todo, skipped = [], 0
    hashes = hashes or {}
    for entry in entries:
        path = os.path.abspath(entry.path)  # scan_archive joins the resolved root: no symlink walk per file
        try:
            sha = hashes.get(path) or file_sha256(path)
        except OSError as exc:
            stats.record_bad(entry.path, f"unreadable ({exc.strerror or exc})")
            continue
        old = known.get(path)
        if old is not None and old.sha256 == sha:
            skipped += 1
        else:
            todo.append(PlanItem(entry, path, sha, old is not None))
    return todo, skipped


def read_batches(items: Sequence[PlanItem], batch_size: int, resolution: int, stats: ReadStats, *,
                 policy: str = "crop",
                 keep_tags: bool = False) -> Iterator[tuple[list[PlanItem], np.ndarray, list[tuple[int, int]]]]:
    """Reader: decoded, squared images per batch with their plan items and original (height, width)."""
    by_path = {item.entry.path: item for item in items}
    for batch in iter_batches([i.entry for i in items], batch_size, resolution, policy=policy, keep_tags=keep_tags,
                              stats=stats):
        # The batch's entries carry what decoding found (a DICOM file's tags) into the stored labels.
        yield ([replace(by_path[e.path], entry=e) for e in batch.entries], batch.images,
               [read_image_size(e.path) for e in batch.entries])


def prefetch(iterable: Iterable, depth: int = 2) -> Iterator:
    """Run a producer in a thread `depth` items ahead (decoding overlaps encoding); its errors re-raise here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        """Fill the queue; hand the consumer either items, the end marker, or the producer's error."""
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            q.put((done, exc))

    thread = threading.Thread(target=produce, name="s2m-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
