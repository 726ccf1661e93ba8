"""Keep the derived FAISS index in step with SQL + shards (resume, repair), and remove entries."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from index.atomic import write_json
from index.layout import IndexLock, IndexPaths, index_paths
from index.row_reader import ShardRowReader
from index.shards import ShardStore
from index.stamp import IndexStamp, read_stamp, write_stamp
from index.store import VectorStore
from s2m_retrieval.data.archive import frame_prefix, split_frame_key
from s2m_retrieval.errors import BadInputError, IndexCorruptError
from s2m_retrieval.storage import catalog
from s2m_retrieval.storage.catalog import StoredVector
from s2m_retrieval.storage import open_database
from s2m_retrieval.storage.db import Database, display_url, resolve_home

log = logging.getLogger(__name__)
ADD_CHUNK = 8192  # vectors gathered from shards per FAISS add, to bound memory


@dataclass
class WriteHandle:
    """An index held for writing: its paths, the database, its shards."""

    paths: IndexPaths
    db: Database
    shards: ShardStore
    database_id: str


@contextmanager
def open_for_write(home, name: str, db_url: str | None = None) -> Iterator[WriteHandle]:
    """Lock the index (one writer), open and migrate the database; both released on exit."""
    paths = index_paths(resolve_home(home), name)
    with IndexLock(paths):
        db = open_database(paths.home, db_url)
        try:
            with db.session(write=True) as s:
                database_id = catalog.database_id(s)
            yield WriteHandle(paths, db, ShardStore(paths.shards), database_id)
        finally:
            db.dispose()


def check_owner(paths: IndexPaths, stamp: IndexStamp, db: Database, database_id: str | None = None) -> str:
    """Refuse an index built against another database (its shards are garbage to this one); returns this db's id.

    Manifests made before the identity was stamped are judged by their rows: a synced or sharded index
    whose name has no vector row in this database is someone else's.
    """
    with db.session() as s:
        database_id = database_id or catalog.database_id(s)
        rows = catalog.count_vectors(s, stamp.name)
    if stamp.database_id:
        foreign = stamp.database_id != database_id
    else:
        foreign = rows == 0 and (stamp.synced_vector_id > 0 or bool(ShardStore(paths.shards).names()))
    if foreign:
        raise BadInputError(f"index {stamp.name!r} under {paths.home} belongs to another database (not "
                            f"{display_url(db.url)}); open it with the database it was built with (--db, or db_url= in "
                            "Python), or rebuild it in this one (--rebuild, rebuild=True)")
    return database_id


def claim(handle: WriteHandle, stamp: IndexStamp) -> None:
    """Check the index belongs to the handle's database, and stamp that identity into an older manifest."""
    check_owner(handle.paths, stamp, handle.db, handle.database_id)
    if stamp.database_id != handle.database_id:
        stamp.database_id = handle.database_id
        write_stamp(handle.paths.manifest, stamp)


@dataclass
class SyncReport:
    """What a sync changed in FAISS."""

    trained: bool = False
    added: int = 0
    removed: int = 0
    rebuilt: bool = False
    pending: int = 0  # rows left out because a trainable index has too few vectors to train
    need: int = 0

    @property
    def changed(self) -> bool:
        """Whether the FAISS index differs from before."""
        return self.trained or self.added > 0 or self.removed > 0 or self.rebuilt


def load_store_for_write(paths: IndexPaths, stamp: IndexStamp) -> tuple[VectorStore, bool]:
    """The index's FAISS store in RAM, or a fresh one when missing or damaged: (store, recovered)."""
    if paths.faiss_file.is_file():
        try:
            store = VectorStore.load(paths.faiss_file, stamp.factory, search_defaults=stamp.search)
            if store.dim == stamp.dim:
                return store, False
            log.warning("%s has dim %d, the stamp says %d; rebuilding it from the shards",
                        paths.faiss_file, store.dim, stamp.dim)
        except IndexCorruptError as exc:
            log.warning("%s; rebuilding it from the shards", exc)
        return VectorStore.create(stamp.dim, stamp.factory, stamp.faiss_metric), True
    # No file: expected before the first save, a loss after one (the stamp then records synced rows).
    return VectorStore.create(stamp.dim, stamp.factory, stamp.faiss_metric), stamp.synced_vector_id > 0


def _add_rows(store: VectorStore, shards: ShardStore, rows: Sequence[StoredVector]) -> int:
    for i in range(0, len(rows), ADD_CHUNK):
        chunk = rows[i:i + ADD_CHUNK]
        vectors = shards.gather("vectors", [(r.shard, r.row) for r in chunk])
        store.add(np.array([r.image_id for r in chunk], dtype=np.int64), vectors)
    return len(rows)


def train_store(store: VectorStore, shards: ShardStore, rows: Sequence[StoredVector]) -> bool:
    """Train an untrained store on a seeded sample of the stored vectors; False when there are too few."""
    need, want = store.training_size(len(rows))
    if len(rows) < need or not rows:
        return False
    pick = np.sort(np.random.default_rng(0).choice(len(rows), size=want, replace=False))
    # pread, not memory maps: a seeded sample touches every shard, and mapped pages would count in the RSS of a
    # large build (~1.6 GB at 1M x 2,560-d) until the whole sample is read.
    reader = ShardRowReader(shards)
    store.train_chunked(want, lambda positions: reader.rows(
        "vectors", [(rows[i].shard, rows[i].row) for i in pick[positions]]))
    return True


def sync_store(store: VectorStore, shards: ShardStore, rows: Sequence[StoredVector],
               synced_vector_id: int) -> SyncReport:
    """Make FAISS hold exactly the SQL rows: train if needed, drop extras and stale entries, add the missing."""
    report = SyncReport()
    if not store.is_trained:
        report.need = store.training_size(len(rows))[0]
        if not train_store(store, shards, rows):
            report.pending = len(rows)
            return report
        report.trained = True
    faiss_ids = store.ids()
    present = set(faiss_ids.tolist())
    wanted = {r.image_id for r in rows}
    # Rows newer than the last save may have replaced a vector FAISS still holds under the same id.
    stale = {r.image_id for r in rows if r.vector_id > synced_vector_id} & present
    drop = (present - wanted) | stale
    if len(present) != len(faiss_ids) or (drop and not store.supports_remove):
        store.reset()
        report.rebuilt, present = True, set()
    elif drop:
        report.removed = store.remove(sorted(drop))
        present -= drop
    report.added = _add_rows(store, shards, [r for r in rows if r.image_id not in present])
    return report


def save_index(paths: IndexPaths, store: VectorStore, stamp: IndexStamp, synced_vector_id: int) -> None:
    """Write FAISS, then the stamp that says which SQL rows it reflects (a crash in between only re-syncs)."""
    store.save(paths.faiss_file)
    stamp.count = store.ntotal
    stamp.synced_vector_id = synced_vector_id
    stamp.search = store.search_defaults
    write_stamp(paths.manifest, stamp)


def collect_garbage(handle: WriteHandle, name: str) -> int:
    """Delete shard files no SQL row refers to, and temp files of killed writes."""
    with handle.db.session() as s:
        referenced = catalog.referenced_shards(s, name)
    removed = handle.shards.collect_garbage(referenced)
    for leftover in handle.paths.root.glob(".*.tmp"):
        leftover.unlink(missing_ok=True)
    return removed


def resync(handle: WriteHandle, stamp: IndexStamp, store: VectorStore) -> tuple[SyncReport, int]:
    """Sync FAISS with SQL and save it when it changed; returns (report, last vector id reflected)."""
    with handle.db.session() as s:
        rows = catalog.stored_vectors(s, stamp.name)
    report = sync_store(store, handle.shards, rows, stamp.synced_vector_id)
    synced = max((r.vector_id for r in rows), default=0) if not report.pending else stamp.synced_vector_id
    if report.changed or synced != stamp.synced_vector_id or not handle.paths.faiss_file.is_file():
        save_index(handle.paths, store, stamp, synced)
    return report, synced


REBUILD_FORMAT = "s2m-rebuild/1"


def write_rebuild_list(paths: IndexPaths, images: Sequence[tuple[str, str, dict]]) -> None:
    """Record the (path, stem, labels) a rebuild is to re-encode, atomically, before it wipes anything."""
    write_json(paths.rebuild_file, {"format": REBUILD_FORMAT, "images": [list(image) for image in images]}, fsync=True)


def rebuild_list(paths: IndexPaths) -> list[tuple[str, str, dict]]:
    """The images of an interrupted rebuild (none when no rebuild was interrupted)."""
    try:
        data = json.loads(paths.rebuild_file.read_text(encoding="utf-8"))
        if data.get("format") != REBUILD_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        return [(str(path), str(stem), dict(labels)) for path, stem, labels in data["images"]]
    except FileNotFoundError:
        return []
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise IndexCorruptError(f"{paths.rebuild_file} (the images of an interrupted rebuild) is damaged ({exc}); "
                                "delete it and rerun the build with --rebuild (images only that list held are "
                                "then left out)") from None


@dataclass
class RemoveReport:
    """Outcome of `s2m index remove`: image id -> path of what went, keys that named nothing, vectors left."""

    removed: dict[int, str]
    not_found: list[str]
    total: int


def _resolve_keys(session, name: str, keys: Sequence[str]) -> tuple[dict[int, str], list[str], set[str]]:
    """Images named by each key (id, path, stem or labels id), keys that name none, and the files named whole.

    A key naming several images is an error, except the path of a multi-frame file: it names all its frames.
    """
    found: dict[int, str] = {}
    missing, files = [], set()
    for key in keys:
        # A path may be stored as given under the archive root or with its symlinks resolved: try both.
        paths = sorted({os.path.abspath(key), os.path.realpath(key)})
        matches = catalog.match_images(session, name, key, paths, prefixes=[frame_prefix(p) for p in paths])
        owners = {split_frame_key(stored)[0] for stored in matches.values()}
        whole = owners & set(paths)
        if len(matches) > 1 and not (len(owners) == 1 and owners == whole):
            listed = ", ".join(f"{iid}: {path}" for iid, path in sorted(matches.items())[:5])
            raise BadInputError(f"{key!r} names {len(matches)} images in index {name!r} ({listed}); "
                                "give the path or the image id of the one to remove")
        if not matches:
            missing.append(key)
        found.update(matches)
        files |= whole
    return found, missing, files


def remove_entries(keys: Sequence[str], *, name: str = "default", home=None, db_url: str | None = None) -> RemoveReport:
    """Remove images (by id, path, file stem or labels id) from an index: SQL rows, FAISS, unreferenced shards.

    The removal is remembered: later builds and rebuilds of the index leave the paths out until `add_files`
    names them again.
    """
    paths = index_paths(resolve_home(home), name).require()
    with open_for_write(home, name, db_url) as handle:
        stamp = read_stamp(paths.manifest)
        claim(handle, stamp)
        with handle.db.session(write=True) as s:
            found, missing, files = _resolve_keys(s, name, keys)
            if not found:
                raise BadInputError(f"none of {', '.join(keys[:5])} is in index {name!r} "
                                    "(give image ids, paths, file stems or labels ids)")
            version = catalog.get_or_create_model_version(
                s, version=stamp.model_version, name=stamp.model_name, dim=stamp.dim, metric=stamp.metric, config={})
            build_id = catalog.start_build(s, name, version.id, stamp.factory, source="remove")
            catalog.delete_vectors(s, name, sorted(found))
            # Later builds of the archive leave them out: a file named by its path whole, in any --frames.
            catalog.exclude_paths(s, name, set(found.values()) | files)
        store, _ = load_store_for_write(paths, stamp)
        resync(handle, stamp, store)
        collect_garbage(handle, name)
        with handle.db.session(write=True) as s:
            catalog.finish_build(s, build_id, "done", n_removed=len(found))
        return RemoveReport(removed=found, not_found=missing, total=store.ntotal)
