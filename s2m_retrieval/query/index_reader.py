"""Read side of an index for queries: stamp check, memory-mapped FAISS, stored arrays and metadata by id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from index.layout import IndexPaths, index_paths
from index.refine import rerank_exact
from index.row_reader import ShardRowReader
from index.shards import ShardStore
from index.stamp import IndexStamp, read_stamp
from index.store import VectorStore
from s2m_retrieval.errors import IndexCorruptError, IndexIncompleteError, IndexMissingError
from s2m_retrieval.ingest.sync import check_owner
from s2m_retrieval.storage import open_database
from s2m_retrieval.storage.db import Database, resolve_home


@dataclass
class IndexReader:
    """An opened index: `search` in FAISS, then `arrays` (e.g. thumbs) and `images` for the hits."""

    paths: IndexPaths
    stamp: IndexStamp
    store: VectorStore
    db: Database
    shards: ShardStore
    _rows: ShardRowReader | None = field(default=None, repr=False)

    def search(self, queries: np.ndarray, k: int, *, allow: np.ndarray | None = None, refine: int | None = None,
               **knobs) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (distances, image ids) per query; `allow` restricts to those image ids.

        On a compressed (PQ) index `refine` x k candidates are re-ranked with the exact stored vectors
        (default: the stamp's `refine`; 1 or 0 returns the PQ order and distances).
        """
        factor = self.store.search_defaults.get("refine", 0) if refine is None else refine
        if factor <= 1:
            return self.store.search(queries, k, allow=allow, **knobs)
        _, candidates = self.store.search(queries, k * factor, allow=allow, **knobs)
        return rerank_exact(queries, candidates, self._vectors, k)

    def _vectors(self, image_ids: np.ndarray) -> np.ndarray:
        """Stored float vectors of these ids, one pread per row (no shard file is mapped whole)."""
        if self._rows is None:
            self._rows = ShardRowReader(self.shards)
        where = self._locations(image_ids)
        return self._rows.rows("vectors", [where[int(i)] for i in image_ids])

    def _locations(self, image_ids) -> dict[int, tuple[str, int]]:
        """image id -> (shard, row); an id without a row is an IndexCorruptError."""
        from s2m_retrieval.storage.catalog import vector_locations

        ids = [int(i) for i in image_ids]
        with self.db.session() as s:
            where = vector_locations(s, self.stamp.name, ids)
        absent = [i for i in ids if i not in where]
        if absent:
            raise IndexCorruptError(f"index {self.stamp.name!r} has no stored row for image ids {absent[:5]}; "
                                    "run `s2m index verify`")
        return where

    def arrays(self, key: str, image_ids: Sequence[int]) -> np.ndarray:
        """Stored per-image arrays (e.g. "thumbs", "vectors") for these ids, in order."""
        where = self._locations(image_ids)
        return self.shards.gather(key, [where[int(i)] for i in image_ids])

    def images(self, image_ids: Sequence[int]) -> dict[int, dict]:
        """Metadata rows (path, size, labels) of these image ids."""
        from s2m_retrieval.storage.catalog import image_rows

        with self.db.session() as s:
            return image_rows(s, image_ids)

    def close(self) -> None:
        """Release the database connections."""
        self.db.dispose()

    def __enter__(self) -> IndexReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_complete(paths: IndexPaths, stamp: IndexStamp, store: VectorStore, db: Database) -> None:
    """Refuse an index whose FAISS file lags its SQL rows because a build was killed before saving it (queries
    would silently miss those images); a build still running is fine (its snapshot is what there is)."""
    from index.layout import IndexLock
    from s2m_retrieval.storage import catalog

    with db.session() as s:
        rows = catalog.count_vectors(s, stamp.name)
        sources = [b.source for b in catalog.recent_builds(s, stamp.name, limit=20) if b.source not in (None, "files")]
    if rows == store.ntotal or IndexLock.held(paths):
        return
    again = f"s2m index build {sources[0] if sources else 'ARCHIVE'}"
    raise IndexIncompleteError(f"index {stamp.name!r} is incomplete: {rows} images are recorded but its FAISS file "
                               f"holds {store.ntotal} (a build was interrupted before saving it); finish it with "
                               f"`{again} --name {stamp.name}` (it resumes)")


def open_index(*, name: str = "default", home=None, db_url: str | None = None, model_version: str | None = None,
               metric: str | None = None, dim: int | None = None) -> IndexReader:
    """Open an index for queries; a stamp that disagrees with the model in use raises VersionMismatchError."""
    paths = index_paths(resolve_home(home), name).require()
    stamp = read_stamp(paths.manifest)
    stamp.check(model_version=model_version, metric=metric, dim=dim)
    if not paths.faiss_file.is_file():
        raise IndexMissingError(f"index {name!r} has no FAISS file yet (interrupted first build?); "
                                f"rerun `s2m index build ARCHIVE --name {name}`")
    db = open_database(paths.home, db_url)
    try:
        check_owner(paths, stamp, db)
        store = VectorStore.load(paths.faiss_file, stamp.factory, mmap=True, search_defaults=stamp.search)
        if store.dim != stamp.dim:
            raise IndexCorruptError(f"FAISS file {paths.faiss_file} has dim {store.dim}, its stamp says "
                                    f"{stamp.dim}; rebuild: {stamp.rebuild_hint()}")
        _check_complete(paths, stamp, store, db)
    except BaseException:
        db.dispose()
        raise
    return IndexReader(paths, stamp, store, db, ShardStore(paths.shards))
