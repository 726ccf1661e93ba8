"""Random row reads from shard files at query time: cached .npy headers, one pread per row, no memory maps.

A query reads ~100 rows scattered over as many shards (one per build batch). `ShardStore.gather` maps each
shard file with `np.load`, ~0.5 ms per file (~60 ms per query at 100k entries); here each shard's header
is parsed once per process and each row is a single pread (~10 ms per query, benchmarks/bench_retrieval.py).
Shard files are never rewritten under the same name, so a cached header stays valid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from index.shards import ShardStore
from s2m_retrieval.errors import IndexCorruptError

REBUILD = "rebuild the index with --rebuild"


class ShardRowReader:
    """Rows of one array key across shards, read with pread; headers (offset, row shape, dtype) cached."""

    def __init__(self, shards: ShardStore) -> None:
        self.shards = shards
        self._headers: dict[tuple[str, str], tuple[int, tuple[int, ...], np.dtype]] = {}

    def _header(self, fh, shard: str, key: str) -> tuple[int, tuple[int, ...], np.dtype]:
        cached = self._headers.get((shard, key))
        if cached is None:
            path = self.shards.path(shard, key)
            try:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(fh)
            except ValueError as exc:
                raise IndexCorruptError(f"vector shard {path} is corrupt ({str(exc)[:80]}); {REBUILD}") from None
            if fortran or dtype.hasobject or not shape:
                raise IndexCorruptError(f"vector shard {path} is not a C-ordered numeric array; {REBUILD}")
            cached = self._headers[(shard, key)] = (fh.tell(), tuple(shape), dtype)
        return cached

    def rows(self, key: str, locations: Sequence[tuple[str, int]]) -> np.ndarray:
        """Rows `[(shard, row), ...]` of array `key`, stacked in the given order."""
        if not locations:
            raise ValueError("rows needs at least one location")
        by_shard: dict[str, list[int]] = {}
        for i, (shard, _) in enumerate(locations):
            by_shard.setdefault(shard, []).append(i)
        out = None
        for shard, positions in by_shard.items():
            path = self.shards.path(shard, key)
            try:
                fh = open(path, "rb")
            except FileNotFoundError:
                raise IndexCorruptError(f"vector shard {path} is missing; {REBUILD}") from None
            with fh:
                offset, shape, dtype = self._header(fh, shard, key)
                row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
                if out is None:
                    out = np.empty((len(locations),) + shape[1:], dtype=dtype)
                elif out.shape[1:] != shape[1:] or out.dtype != dtype:
                    raise IndexCorruptError(f"vector shard {path} holds {dtype} rows of {shape[1:]}, other shards "
                                            f"{out.dtype} rows of {out.shape[1:]}; {REBUILD}")
                for i in positions:
                    row = locations[i][1]
                    data = os.pread(fh.fileno(), row_bytes, offset + row * row_bytes) if row < shape[0] else b""
                    if len(data) != row_bytes:
                        raise IndexCorruptError(f"vector shard {path} has {shape[0]} rows (or is truncated), "
                                                f"SQL refers to row {row}; {REBUILD}")
                    out[i] = np.frombuffer(data, dtype=dtype).reshape(shape[1:])
        return out
