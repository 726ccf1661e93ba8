"""The FAISS vector store: ids = SQL image ids (IDMap2, or IVF's own ids), saved atomically, opened mmap."""

from __future__ import annotations

import os
from pathlib import Path

import faiss
import numpy as np

from index import factory as fac
from s2m_retrieval.errors import IndexCorruptError


def _mmap_flags(factory: str) -> int:
    """Read flags that map the file instead of copying it.

    FAISS 1.15 maps different parts per flag: IO_FLAG_MMAP maps IVF inverted lists but still copies
    flat codes (Flat, HNSW storage, PQ); IO_FLAG_MMAP_IFC maps flat codes; the two together fail on IVF.
    """
    base = faiss.IO_FLAG_MMAP if "IVF" in factory.upper() else faiss.IO_FLAG_MMAP_IFC
    return base | faiss.IO_FLAG_READ_ONLY


def _read(path: Path, flags: int) -> faiss.Index:
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as exc:
        if not path.is_file():
            raise FileNotFoundError(path) from None
        raise IndexCorruptError(f"FAISS file {path} is corrupt or truncated ({fac.faiss_message(exc)})") from None


class VectorStore:
    """One FAISS index with add / remove / search by SQL id; read-only when opened memory-mapped."""

    def __init__(self, index: faiss.Index, factory: str, *, read_only: bool = False,
                 search_defaults: dict | None = None) -> None:
        self.index = index
        self.factory = factory
        self.read_only = read_only
        self.search_defaults = dict(search_defaults or fac.default_search(index))
        self._removable: bool | None = None

    @classmethod
    def create(cls, dim: int, factory: str, metric: str = "L2") -> VectorStore:
        """An empty store for `dim`-dimensional vectors built from a FAISS factory string."""
        return cls(fac.make_index(dim, factory, metric), factory)

    @classmethod
    def load(cls, path: str | os.PathLike, factory: str = "", *, mmap: bool = False,
             search_defaults: dict | None = None) -> VectorStore:
        """Read an index file; `mmap=True` maps it read-only instead of copying it into RAM."""
        path = Path(path)
        index = _read(path, _mmap_flags(factory) if mmap else 0)
        if mmap and not factory and isinstance(fac.core_index(index), faiss.IndexIVF):
            index = _read(path, _mmap_flags("IVF"))  # type learnt from the file: map its lists instead
        if not fac.has_own_ids(index):
            raise IndexCorruptError(f"FAISS file {path} is not an s2m index (no IDMap2 wrapper, not IVF)")
        return cls(index, factory, read_only=mmap, search_defaults=search_defaults)

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically: temp file in the same folder, fsync, rename over the old one."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(self.index, str(tmp))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @property
    def dim(self) -> int:
        """Vector size."""
        return self.index.d

    @property
    def ntotal(self) -> int:
        """Number of stored vectors."""
        return self.index.ntotal

    @property
    def is_trained(self) -> bool:
        """Whether vectors can be added (IVF/PQ/PCA need training first)."""
        return self.index.is_trained

    def ids(self) -> np.ndarray:
        """All stored ids (int64); insertion order for IDMap2, list by list for IVF."""
        return fac.stored_ids(self.index)

    @property
    def supports_remove(self) -> bool:
        """Whether remove_ids works (HNSW cannot; callers rebuild it from the shards instead)."""
        if self._removable is None:
            try:
                self.index.remove_ids(faiss.IDSelectorBatch(np.zeros(0, dtype=np.int64)))
                self._removable = True
            except RuntimeError:
                self._removable = False
        return self._removable

    def _writable(self) -> None:
        if self.read_only:
            raise RuntimeError("this VectorStore is memory-mapped read-only; load it with mmap=False to change it")

    def train(self, sample: np.ndarray) -> None:
        """Train on a sample `[N, D]` (no-op for indexes that need none)."""
        self._writable()
        if not self.is_trained:
            fac.train(self.index, sample)
            self.search_defaults = fac.default_search(self.index) | self.search_defaults

    def train_chunked(self, n: int, read) -> None:
        """Train on `n` sample vectors fetched in chunks by `read(positions)` (see `factory.train_chunked`)."""
        self._writable()
        if not self.is_trained:
            fac.train_chunked(self.index, n, read)
            self.search_defaults = fac.default_search(self.index) | self.search_defaults

    def training_size(self, available: int) -> tuple[int, int]:
        """(minimum, wanted) training vectors for this index, given `available`."""
        return fac.training_size(self.index, available)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors `[N, D]` under `ids` `[N]`; the caller removes an id before re-adding it."""
        self._writable()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(ids) != len(vectors):
            raise ValueError(f"add expects ids [N] and vectors [N, {self.dim}], got {ids.shape} and {vectors.shape}")
        if len(ids):
            self.index.add_with_ids(vectors, ids)

    def remove(self, ids) -> int:
        """Remove ids; returns how many were present. Raises RuntimeError where the index cannot remove."""
        self._writable()
        ids = np.ascontiguousarray(np.asarray(ids, dtype=np.int64))
        if not len(ids):
            return 0
        return int(self.index.remove_ids(faiss.IDSelectorBatch(ids)))

    def reset(self) -> None:
        """Drop every vector, keeping the training (quantizers, PCA)."""
        self._writable()
        self.index.reset()

    def search(self, queries: np.ndarray, k: int, *, allow: np.ndarray | None = None,
               nprobe: int | None = None, ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (distances, ids) `[Q, k]`; `allow` restricts to those ids (filters pushed into FAISS).

        Missing results (fewer than k allowed or found) have id -1. A single query runs on one OpenMP
        thread: on a small machine the thread start-up costs more than it saves.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries must be [Q, {self.dim}], got {queries.shape}")
        sel = None
        if allow is not None:
            allow = np.ascontiguousarray(np.unique(np.asarray(allow, dtype=np.int64)))
            if not len(allow):
                return (np.full((len(queries), k), np.inf, np.float32), np.full((len(queries), k), -1, np.int64))
            sel = faiss.IDSelectorBatch(allow)
        params = fac.search_parameters(
            self.index, k, sel=sel, n_allowed=None if allow is None else len(allow),
            nprobe=nprobe or self.search_defaults.get("nprobe"),
            ef_search=ef_search or self.search_defaults.get("efSearch"))
        previous = faiss.omp_get_max_threads()
        if len(queries) == 1:
            faiss.omp_set_num_threads(1)
        try:
            distances, ids = self.index.search(queries, k, params=params)
        finally:
            faiss.omp_set_num_threads(previous)
        return distances, ids
