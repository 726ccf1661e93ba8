"""`s2m index info` and `s2m index verify`: what an index holds, and whether its parts agree."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from index.layout import IndexLock, IndexPaths, index_paths
from index.shards import ShardStore
from index.stamp import read_stamp
from index.store import VectorStore
from s2m_retrieval.data.archive import split_frame_key
from s2m_retrieval.errors import IndexCorruptError
from s2m_retrieval.ingest.sync import check_owner, rebuild_list
from s2m_retrieval.storage import catalog
from s2m_retrieval.storage import open_database
from s2m_retrieval.storage.db import display_url, resolve_home


def _disk(paths: IndexPaths) -> dict:
    faiss_bytes = paths.faiss_file.stat().st_size if paths.faiss_file.is_file() else 0
    return {"faiss_bytes": faiss_bytes, "shard_bytes": ShardStore(paths.shards).size_bytes()}


@contextmanager
def _owned_session(paths: IndexPaths, stamp, db_url: str | None):
    """A session of the index's own database (another database's index is a one-line error); yields (url, s)."""
    db = open_database(paths.home, db_url)
    try:
        check_owner(paths, stamp, db)
        with db.session() as s:
            yield db.url, s
    finally:
        db.dispose()


def index_info(*, name: str = "default", home=None, db_url: str | None = None) -> dict:
    """Stamp, counts (SQL rows, FAISS vectors), disk use and recent builds of an index, as plain data.

    A build recorded as running while no process holds the index was killed: it is shown as interrupted.
    """
    paths = index_paths(resolve_home(home), name).require()
    stamp = read_stamp(paths.manifest)
    with _owned_session(paths, stamp, db_url) as (url, s):
        rows = catalog.count_vectors(s, name)
        projector = (catalog.model_config(s, stamp.model_version) or {}).get("projector")
        builds = [{"id": b.id, "status": b.status, "started_at": b.started_at.isoformat(timespec="seconds"),
                   "finished_at": b.finished_at.isoformat(timespec="seconds") if b.finished_at else None,
                   "added": b.n_added, "skipped": b.n_skipped, "replaced": b.n_replaced,
                   "removed": b.n_removed, "bad": b.n_bad, "source": b.source}
                  for b in catalog.recent_builds(s, name)]
    if not IndexLock.held(paths):
        for b in builds:
            if b["status"] == "running":
                b["status"] = "interrupted"
    try:
        faiss_count = VectorStore.load(paths.faiss_file, mmap=True).ntotal if paths.faiss_file.is_file() else None
    except IndexCorruptError:
        faiss_count = None
    return {"name": name, "folder": str(paths.root), "database": display_url(url),
            "stamp": dataclasses.asdict(stamp), "projector": projector, "sql_rows": rows, "faiss_vectors": faiss_count,
            **_disk(paths), "builds": builds}


@dataclass
class VerifyReport:
    """Problems (the index is inconsistent) and warnings (worth knowing, not wrong)."""

    name: str
    checked: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No problems found."""
        return not self.problems

    def to_dict(self) -> dict:
        """Plain data for JSON output."""
        return dataclasses.asdict(self) | {"ok": self.ok}


def _sample(items, n: int = 3) -> str:
    items = sorted(items)
    more = f", ... ({len(items)} in all)" if len(items) > n else ""
    return ", ".join(map(str, items[:n])) + more


def verify_index(*, name: str = "default", home=None, db_url: str | None = None,
                 check_hashes: bool = False) -> VerifyReport:
    """Check FAISS ids == SQL rows, the version stamps, shard files and rows, and the image files."""
    from s2m_retrieval.ingest.reader import file_sha256

    paths = index_paths(resolve_home(home), name).require()
    report = VerifyReport(name=name)
    with IndexLock(paths):  # a build in progress would show half-done state
        stamp = read_stamp(paths.manifest)
        with _owned_session(paths, stamp, db_url) as (_, s):
            rows = catalog.stored_vectors(s, name)
            versions = catalog.model_versions_of(s, name)
        sql_ids = {r.image_id for r in rows}
        report.checked["sql_rows"] = len(rows)

        if any(v != stamp.model_version for v in versions):
            report.problems.append(f"SQL rows were made by model versions {versions}, the stamp says "
                                   f"{stamp.model_version}; rebuild: {stamp.rebuild_hint()}")
        _check_faiss(paths, stamp, sql_ids, report)
        _check_shards(ShardStore(paths.shards), stamp, rows, report)

        files = {r.path: split_frame_key(r.path)[0] for r in rows}  # the frames of a file are checked as the file
        unfinished = {path for path, _, _ in rebuild_list(paths)} - set(files.values())
        if unfinished:
            report.problems.append(f"a rebuild was interrupted with {len(unfinished)} images still to encode "
                                   f"({_sample(unfinished)}); rerun `s2m index build` to finish it")
        gone = [r.path for r in rows if not Path(files[r.path]).is_file()]
        report.checked["image_files"] = len(rows) - len(gone)
        if gone:
            report.problems.append(f"{len(gone)} image files are missing on disk ({_sample(gone)}); "
                                   "`s2m index build ARCHIVE --prune` or `s2m index remove` drops them")
        if check_hashes:
            hashed = {f: file_sha256(f) for f in set(files.values()) if Path(f).is_file()}
            changed = [r.path for r in rows if files[r.path] in hashed and hashed[files[r.path]] != r.sha256]
            if changed:
                report.problems.append(f"{len(changed)} image files changed since indexing ({_sample(changed)}); "
                                       "rerun `s2m index build` to re-encode them")
    return report


def _check_faiss(paths: IndexPaths, stamp, sql_ids: set[int], report: VerifyReport) -> None:
    if not paths.faiss_file.is_file():
        if sql_ids:
            report.problems.append(f"FAISS file {paths.faiss_file} is missing; rerun `s2m index build` to rebuild it")
        return
    try:
        store = VectorStore.load(paths.faiss_file, stamp.factory, mmap=True)
    except IndexCorruptError as exc:
        report.problems.append(f"{exc}; rerun `s2m index build` to rebuild it from the stored vectors")
        return
    ids = store.ids().tolist()
    report.checked["faiss_vectors"] = len(ids)
    if store.dim != stamp.dim:
        report.problems.append(f"FAISS dim {store.dim} differs from the stamp's {stamp.dim}")
    if len(ids) != len(set(ids)):
        report.problems.append(f"FAISS holds {len(ids) - len(set(ids))} duplicated ids")
    extra, lost = set(ids) - sql_ids, sql_ids - set(ids)
    if extra:
        report.problems.append(f"{len(extra)} FAISS ids have no SQL row ({_sample(extra)})")
    if lost:
        report.problems.append(f"{len(lost)} SQL rows are not in FAISS ({_sample(lost)}); "
                               "rerun `s2m index build` to add them")
    if stamp.count != len(ids):
        report.warnings.append(f"stamp count {stamp.count} differs from FAISS's {len(ids)}")


def _check_shards(shards: ShardStore, stamp, rows, report: VerifyReport) -> None:
    on_disk = shards.names()
    by_shard: dict[str, int] = {}
    for r in rows:
        by_shard[r.shard] = max(by_shard.get(r.shard, -1), r.row)
    keys = set(stamp.arrays) or {"vectors"}
    broken = []
    for shard, last_row in by_shard.items():
        missing_keys = keys - on_disk.get(shard, set())
        if missing_keys:
            broken.append(f"{shard} lacks {', '.join(sorted(missing_keys))}")
            continue
        for key in keys:
            try:
                array = shards.read(shard, key)
            except IndexCorruptError as exc:
                broken.append(str(exc).rsplit("; ", 1)[0])  # the one hint comes once, after the list
                continue
            if len(array) <= last_row or list(array.shape[1:]) != list(stamp.arrays.get(key, array.shape[1:])):
                broken.append(f"{shard}.{key} has shape {array.shape}, rows up to {last_row} are referenced")
    report.checked["shards"] = len(by_shard)
    if broken:
        report.problems.append(f"{len(broken)} shard problems ({_sample(broken, 2)}); rebuild with --rebuild")
    unreferenced = set(on_disk) - set(by_shard)
    if unreferenced:
        report.warnings.append(f"{len(unreferenced)} shard files are not referenced (left by an interrupted run; "
                               "the next build deletes them)")
