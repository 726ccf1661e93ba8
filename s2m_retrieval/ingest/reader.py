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

from s2m_retrieval.data.archive import (ArchiveEntry, ReadStats, entry_frames, frame_key, iter_batches, read_image_size,
                                        skip_reason)
from s2m_retrieval.errors import BadImageError

if TYPE_CHECKING:
    from s2m_retrieval.storage.catalog import StoredVector


@dataclass(frozen=True, slots=True)  # one per image of an archive: no per-object dict
class PlanItem:
    """An image to encode: new, or changed since it was indexed (`replaces`).

    `path` is the key it is stored under: the file's absolute path, plus `#frame=K` for frame K of a multi-frame
    file (`archive.frame_key`); `sha256` is the file's.
    """

    entry: ArchiveEntry
    path: str
    sha256: str
    replaces: bool


@dataclass
class Plan:
    """What a build is to do: the images to encode, how many are unchanged, and every key the archive has now."""

    todo: list[PlanItem]
    skipped: int
    seen: dict[str, ArchiveEntry]  # key -> entry (with its frame), for the encoded and the unchanged alike


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plan(entries: Iterable[ArchiveEntry], known: dict[str, StoredVector], stats: ReadStats,
         hashes: Mapping[str, str] | None = None, frames: str = "first") -> Plan:
    """Split entries into work (new or changed images) and a count of unchanged ones skipped.

    A multi-frame DICOM file becomes the entries of the frames `frames` takes of it (see `archive.entry_frames`),
    each under its own key; its header is read for that, unless the file is stored, unchanged, as one image.
    `hashes` holds sha256s already computed elsewhere (a Ray engine), by absolute path; the others are hashed here.
    """
    out = Plan([], 0, {})
    hashes = hashes or {}
    for entry in entries:
        path = os.path.abspath(entry.path)  # scan_archive joins the resolved root: no symlink walk per file
        try:
            sha = hashes.get(path) or file_sha256(path)
        except OSError as exc:
            stats.record_bad(entry.path, f"unreadable ({exc.strerror or exc})")
            continue
        old = known.get(path)
        if old is not None and old.sha256 == sha:  # frames of a multi-frame file are stored under other keys
            out.skipped += 1
            out.seen[path] = entry
            continue
        try:
            numbers = entry_frames(path, frames)
        except BadImageError as exc:
            stats.record_bad(entry.path, skip_reason(exc))
            continue
        for frame in numbers:
            key = frame_key(path, frame)
            item = entry if frame == entry.frame else replace(entry, frame=frame)
            out.seen[key] = item
            old = known.get(key)
            if old is not None and old.sha256 == sha:
                out.skipped += 1
            else:
                out.todo.append(PlanItem(item, key, sha, old is not None))
    return out


def read_batches(items: Sequence[PlanItem], batch_size: int, resolution: int, stats: ReadStats, *,
                 policy: str = "crop",
                 keep_tags: bool = False) -> Iterator[tuple[list[PlanItem], np.ndarray, list[tuple[int, int]]]]:
    """Reader: decoded, squared images per batch with their plan items and original (height, width)."""
    by_key = {item.entry.key: item for item in items}
    for batch in iter_batches([i.entry for i in items], batch_size, resolution, policy=policy, keep_tags=keep_tags,
                              stats=stats):
        # The batch's entries carry what decoding found (a DICOM file's tags, its frame) into the stored labels.
        yield ([replace(by_key[e.key], entry=e) for e in batch.entries], batch.images,
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
