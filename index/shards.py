"""Durable per-batch vector shards: `<shard>.<key>.npy` files written before SQL records them."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from s2m_retrieval.errors import IndexCorruptError

SHARD_FILE = re.compile(r"^(?P<shard>[A-Za-z0-9_-]+)\.(?P<key>[A-Za-z0-9_]+)\.npy$")
KEY_RE = re.compile(r"^[A-Za-z0-9_]+$")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ShardStore:
    """The shard folder of one index: write whole batches, read rows back (memory-mapped), collect garbage."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)

    def path(self, shard: str, key: str) -> Path:
        """File of array `key` of `shard`."""
        return self.folder / f"{shard}.{key}.npy"

    def write(self, shard: str, arrays: dict[str, np.ndarray]) -> None:
        """Write every array of a batch durably (temp, fsync, rename, fsync folder) before SQL refers to it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for key, array in arrays.items():
            if not KEY_RE.match(key):
                raise ValueError(f"array key {key!r} must be letters, digits or '_'")
            final = self.path(shard, key)
            tmp = final.with_name(f".{final.name}.tmp")
            with open(tmp, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
        _fsync_dir(self.folder)

    def read(self, shard: str, key: str, *, mmap: bool = True) -> np.ndarray:
        """The whole array `key` of `shard` (memory-mapped by default)."""
        path = self.path(shard, key)
        try:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except FileNotFoundError:
            raise IndexCorruptError(f"vector shard {path} is missing; rebuild the index with --rebuild") from None
        except (OSError, ValueError) as exc:
            raise IndexCorruptError(f"vector shard {path} is corrupt ({str(exc)[:80]}); "
                                    "rebuild the index with --rebuild") from None

    def gather(self, key: str, locations: Iterable[tuple[str, int]]) -> np.ndarray:
        """Rows `[(shard, row), ...]` of array `key`, stacked in the given order."""
        locations = list(locations)
        if not locations:
            raise ValueError("gather needs at least one location")
        opened: dict[str, np.ndarray] = {}
        by_shard: dict[str, list[int]] = {}
        for i, (shard, _) in enumerate(locations):
            by_shard.setdefault(shard, []).append(i)
        out = None
        for shard, positions in by_shard.items():
            array = opened.setdefault(shard, self.read(shard, key))
            rows = np.fromiter((locations[i][1] for i in positions), dtype=np.int64, count=len(positions))
            if rows.max() >= len(array):
                raise IndexCorruptError(f"vector shard {self.path(shard, key)} has {len(array)} rows, "
                                        f"SQL refers to row {int(rows.max())}; rebuild the index with --rebuild")
            if out is None:
                out = np.empty((len(locations),) + array.shape[1:], dtype=array.dtype)
            out[positions] = array[rows]
        return out

    def files(self) -> list[Path]:
        """Every file in the shard folder."""
        return sorted(self.folder.iterdir()) if self.folder.is_dir() else []

    def names(self) -> dict[str, set[str]]:
        """Shard name -> keys present on disk."""
        found: dict[str, set[str]] = {}
        for path in self.files():
            m = SHARD_FILE.match(path.name)
            if m:
                found.setdefault(m["shard"], set()).add(m["key"])
        return found

    def collect_garbage(self, referenced: set[str]) -> int:
        """Delete shards no SQL row refers to (and leftover temp files); returns files removed.

        Only safe while holding the index lock: a running build's newest shard is not referenced yet.
        """
        removed = 0
        for path in self.files():
            m = SHARD_FILE.match(path.name)
            if (m and m["shard"] not in referenced) or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def size_bytes(self) -> int:
        """Disk use of all shards."""
        return sum(p.stat().st_size for p in self.files())
