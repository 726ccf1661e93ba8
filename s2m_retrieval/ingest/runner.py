"""Index builds as reader -> mapper -> writer: incremental by sha256, resumable after kill -9.

Order of writes per batch, which is what makes a killed build resumable: the batch's arrays go to a
new shard file (fsync'd) first; then one SQL transaction records the images and points their vector
rows at that shard; FAISS is updated in memory and saved now and then. On the next run, shards no
row refers to are deleted, and FAISS is re-synced from SQL + shards before new work starts.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from index.factory import auto_factory
from index.layout import IndexPaths, index_paths
from index.stamp import IndexStamp, read_stamp, write_stamp
from index.store import VectorStore
from s2m_retrieval.ingest.reader import PlanItem, plan, prefetch, read_batches
from s2m_retrieval.data.archive import ArchiveEntry, ReadStats, scan_archive, split_frame_key
from s2m_retrieval.data.dicom import DESCRIPTIVE_TAGS, FRAME_LABEL, IDENTIFYING_TAGS, check_frame_choice, is_dicom_path
from s2m_retrieval.model.archive_encoder import ArchiveEncoder, check_outputs
from s2m_retrieval.errors import ArchiveError, BadInputError, VersionMismatchError
from s2m_retrieval.ingest.sync import (WriteHandle, check_owner, claim, collect_garbage, load_store_for_write,
                                      open_for_write, rebuild_list, resync, save_index, sync_store, write_rebuild_list)
from s2m_retrieval.storage import catalog
from s2m_retrieval.storage.catalog import ImageRecord
from s2m_retrieval.storage.db import resolve_home

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (images just done, images to do in total)


@dataclass(frozen=True)
class BuildOptions:
    """How to build: index name, FAISS factory (None = keep the index's, or choose by size), batching."""

    name: str = "default"
    factory: str | None = None
    batch_size: int = 64
    rebuild: bool = False
    prune: bool = False
    checkpoint_s: float = 60.0
    keep_tags: bool = False  # store DICOM tags that identify patients (never by default)
    frames: str | None = None  # frames of multi-frame DICOM files: first, middle, all (None: the index's own, or first)


@dataclass
class BuildSummary:
    """What a build did, for the end-of-run summary and `--json`."""

    name: str
    source: str
    factory: str = ""
    build_id: int = 0
    added: int = 0
    skipped: int = 0
    replaced: int = 0
    removed: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    excluded: int = 0  # archive files left out because the user removed them (`s2m index remove`)
    relabelled: int = 0  # unchanged files whose labels.csv row changed: labels updated, nothing re-encoded
    lost: list[str] = field(default_factory=list)  # indexed before a --rebuild, gone from disk: not re-indexed
    total: int = 0
    seconds: float = 0.0
    faiss_rebuilt: bool = False

    @property
    def images_per_s(self) -> float:
        """Encoded images per second of wall time."""
        return (self.added + self.replaced) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        """Plain data for JSON output."""
        return asdict(self) | {"images_per_s": round(self.images_per_s, 1)}

    def lines(self, max_listed: int = 10) -> list[str]:
        """Human summary: counts, then bad and missing files with reasons."""
        out = [f"index {self.name!r} ({self.factory}): added {self.added}, replaced {self.replaced}, "
               f"skipped {self.skipped} unchanged, removed {self.removed}, bad {len(self.bad)}, "
               f"missing {len(self.missing)}; {self.total} vectors in the index; "
               f"{self.seconds:.1f} s ({self.images_per_s:.0f} images/s)"]
        if self.faiss_rebuilt:
            out.append("the FAISS file was missing or damaged and was rebuilt from the stored vectors")
        if self.relabelled:
            out.append(f"labels of {self.relabelled} unchanged files updated from the archive's labels.csv")
        out += [f"  bad: {path}: {reason}" for path, reason in self.bad[:max_listed]]
        out += [f"  missing on disk: {path}" for path in self.missing[:max_listed]]
        out += [f"  no longer on disk, not in the rebuilt index: {path}" for path in self.lost[:max_listed]]
        hidden = sum(max(0, len(x) - max_listed) for x in (self.bad, self.missing, self.lost))
        if hidden:
            out.append(f"  ... and {hidden} more (see --json)")
        if self.missing and not self.removed:
            out.append("  files missing on disk are still indexed; pass --prune to remove them")
        if self.excluded:
            out.append(f"  left out {self.excluded} files removed with `s2m index remove` "
                       "(`s2m index add PATH` brings one back)")
        return out


class BuildEngine(Protocol):
    """Where the mapper runs (hashing, decoding, encoding); the writer always runs in the calling process."""

    def hashes(self, entries: Sequence[ArchiveEntry]) -> dict[str, str]:
        """sha256 by absolute path of the files it could hash; `plan` hashes the rest itself."""
        ...

    def encoded_batches(self, encoder: ArchiveEncoder, todo: Sequence[PlanItem], batch_size: int, stats: ReadStats,
                        *, policy: str, keep_tags: bool) -> Iterator[tuple[list[PlanItem], dict[str, np.ndarray],
                                                                        list[tuple[int, int]]]]:
        """(items, checked encoder arrays, original sizes) per batch of good images, in plan order."""
        ...


class LocalEngine:
    """The default engine: hashing here, decoding in a reader thread, encoding in this process; needs no Ray."""

    def hashes(self, entries: Sequence[ArchiveEntry]) -> dict[str, str]:
        """None computed ahead: `plan` hashes each file as it goes."""
        return {}

    def encoded_batches(self, encoder: ArchiveEncoder, todo: Sequence[PlanItem], batch_size: int, stats: ReadStats,
                        *, policy: str, keep_tags: bool) -> Iterator[tuple[list[PlanItem], dict[str, np.ndarray],
                                                                        list[tuple[int, int]]]]:
        """Decode one batch ahead of the encoder."""
        reading = read_batches(todo, batch_size, encoder.resolution, stats, policy=policy, keep_tags=keep_tags)
        for items, images, sizes in prefetch(reading):
            yield items, check_outputs(encoder, images, encoder.encode(images)), sizes


class BatchWriter:
    """Writer: shard file, then one SQL transaction, then FAISS in memory (saved every `checkpoint_s`)."""

    def __init__(self, handle: WriteHandle, stamp: IndexStamp, store: VectorStore, *, model_version_id: int,
                 build_id: int, synced_vector_id: int, checkpoint_s: float) -> None:
        self.h, self.stamp, self.store = handle, stamp, store
        self.model_version_id, self.build_id = model_version_id, build_id
        self.synced_id = synced_vector_id
        self.in_sync = store.is_trained  # FAISS reflects every committed row up to synced_id
        self.checkpoint_s = checkpoint_s
        self.last_save = time.monotonic()
        self.seq = 0
        # Part of every shard name, so shards of builds against other databases (same build ids) never collide.
        self.token = secrets.token_hex(3)
        self.added = self.replaced = 0  # rows committed by this run: new images, and new vectors of changed ones
        self.train_at = 0

    def write(self, items: Sequence[PlanItem], arrays: dict[str, np.ndarray],
              sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """Store one encoded batch; returns (added, replaced)."""
        shard = f"{self.build_id:06d}-{self.token}-{self.seq:06d}"
        self.seq += 1
        self.h.shards.write(shard, arrays)
        records = [ImageRecord(path=it.path, stem=it.entry.stem, sha256=it.sha256, width=w, height=h,
                               labels=dict(it.entry.labels)) for it, (h, w) in zip(items, sizes)]
        with self.h.db.session(write=True) as s:
            stored = catalog.record_batch(s, self.stamp.name, self.model_version_id, shard, records)
            replaced = np.array([iid for iid, _, rep in stored if rep], dtype=np.int64)
            # In the same transaction: a build killed later still shows what it committed.
            catalog.update_build_counts(s, self.build_id, n_added=self.added + len(stored) - len(replaced),
                                        n_replaced=self.replaced + len(replaced))
        self.added += len(stored) - len(replaced)
        self.replaced += len(replaced)
        ids = np.array([iid for iid, _, _ in stored], dtype=np.int64)
        if self.in_sync and (not len(replaced) or self.store.supports_remove):
            self.store.remove(replaced)
            self.store.add(ids, arrays["vectors"])
            self.synced_id = max(vid for _, vid, _ in stored)
        elif self.in_sync:
            self.in_sync = False  # HNSW cannot drop the old vector: one rebuild from the shards at the end
        elif not self.store.is_trained and self.train_at and self.added + self.replaced >= self.train_at:
            _, self.synced_id = resync(self.h, self.stamp, self.store)
            self.in_sync = self.store.is_trained
            self.last_save = time.monotonic()
        if self.in_sync and time.monotonic() - self.last_save > self.checkpoint_s:
            save_index(self.h.paths, self.store, self.stamp, self.synced_id)
            self.last_save = time.monotonic()
        return len(stored) - len(replaced), len(replaced)


def _check_model(handle: WriteHandle, stamp: IndexStamp, encoder: ArchiveEncoder, options: BuildOptions) -> None:
    stamp.check(model_version=encoder.version, metric=encoder.metric, dim=encoder.dim)
    if options.factory and options.factory != stamp.factory:
        raise BadInputError(f"index {stamp.name!r} uses factory {stamp.factory}, not {options.factory}; "
                            f"rebuild it to change: {stamp.rebuild_hint()}")
    if options.frames and options.frames != stamp.frames:  # one index never mixes frame choices
        raise BadInputError(f"index {stamp.name!r} holds --frames {stamp.frames} of multi-frame DICOM files, not "
                            f"{options.frames}; leave --frames out to keep its own, or rebuild it to change: "
                            f"{stamp.rebuild_hint()} --frames {options.frames}")
    with handle.db.session() as s:
        others = [v for v in catalog.model_versions_of(s, stamp.name) if v != encoder.version]
    if others:
        raise VersionMismatchError(f"index {stamp.name!r} holds vectors of model version {others[0]}, the model in "
                                   f"use is {encoder.version}; rebuild it: {stamp.rebuild_hint()}")


def _check_trainable(store: VectorStore, factory: str, n_expected: int) -> None:
    """Fail before encoding anything when a trainable factory will never see enough vectors."""
    need = store.training_size(n_expected)[0] if not store.is_trained else 0
    if n_expected < need:
        raise BadInputError(f"factory {factory} needs at least {need} vectors to train, this index would hold "
                            f"{n_expected}; choose a smaller --factory (fewer IVF lists, or Flat)")


def _wipe(handle: WriteHandle, name: str) -> None:
    """--rebuild: forget every vector of the index (SQL rows, FAISS, shards, stamp)."""
    with handle.db.session(write=True) as s:
        catalog.delete_index(s, name)
    shutil.rmtree(handle.paths.shards, ignore_errors=True)
    handle.paths.faiss_file.unlink(missing_ok=True)
    handle.paths.manifest.unlink(missing_ok=True)


def _new_stamp(name: str, encoder: ArchiveEncoder, factory: str, frames: str) -> IndexStamp:
    return IndexStamp(name=name, model_version=encoder.version, model_name=encoder.name, metric=encoder.metric,
                      dim=encoder.dim, factory=factory, weighting=encoder.weighting, resolution=encoder.resolution,
                      frames=frames)


def build_index(archive: str | Path | None, encoder: ArchiveEncoder, *, home=None, db_url: str | None = None,
                options: BuildOptions = BuildOptions(), entries: Sequence[ArchiveEntry] | None = None,
                progress: Progress | None = None, engine: BuildEngine | None = None) -> BuildSummary:
    """Index an archive folder (or explicit `entries`): add new files, replace changed ones, skip the rest.

    `engine` runs the mapper (default: `LocalEngine`; `ray_engine.RayEngine` spreads it over a Ray cluster).
    """
    t0 = time.perf_counter()
    if not 1 <= options.batch_size <= catalog.CHUNK:
        raise BadInputError(f"--batch must be between 1 and {catalog.CHUNK}, got {options.batch_size}")
    root = Path(archive).resolve() if archive is not None else None
    if entries is None:
        if root is None:
            raise BadInputError("give an archive folder or a list of files")
        entries = scan_archive(root)
        if not entries:
            raise ArchiveError(f"no images found in {root}")
    if options.factory:
        VectorStore.create(encoder.dim, options.factory)  # a bad factory string fails before anything is written
    if options.frames is not None:
        check_frame_choice(options.frames)
    summary = BuildSummary(name=options.name, source=str(root) if root else "files")
    paths = index_paths(resolve_home(home), options.name)
    made = [p for p in (paths.root.parent, paths.root) if not p.exists()]
    try:
        _build(encoder, home, db_url, options, entries, root, summary, progress, engine or LocalEngine())
    except BaseException:
        if made and not paths.exists():
            _remove_made(paths, made)
        raise
    summary.seconds = time.perf_counter() - t0
    return summary


def _remove_made(paths: IndexPaths, made: list[Path]) -> None:
    """A first build that failed before its manifest: remove the folders it created (only empty ones)."""
    paths.lock_file.unlink(missing_ok=True)
    for folder in (paths.shards, *reversed(made)):
        try:
            folder.rmdir()
        except OSError:  # absent, or holds something this run did not make
            pass


def _build(encoder: ArchiveEncoder, home, db_url: str | None, options: BuildOptions,
           entries: Sequence[ArchiveEntry], root: Path | None, summary: BuildSummary,
           progress: Progress | None, engine: BuildEngine) -> None:
    with open_for_write(home, options.name, db_url) as handle:
        stamp = read_stamp(handle.paths.manifest) if handle.paths.exists() else None
        # A rebuild keeps the index's frame choice unless told otherwise.
        frames = options.frames or (stamp.frames if stamp is not None else "first")
        if options.rebuild:
            images = rebuild_list(handle.paths)  # a rebuild killed before: its images are still to come
            if stamp is not None and _owned(handle, stamp):  # another database's index starts over empty
                with handle.db.session() as s:
                    images += catalog.indexed_images(s, options.name)
            entries = _with_images(entries, images, summary)
            write_rebuild_list(handle.paths, [(os.path.abspath(e.path), e.stem, dict(e.labels)) for e in entries])
            _wipe(handle, options.name)
            stamp = None
        elif stamp is not None:
            claim(handle, stamp)  # before anything is deleted: another database's shards look like garbage here
        with handle.db.session() as s:
            known = {r.path: r for r in catalog.stored_vectors(s, options.name)}
        if stamp is None:
            n_expected = len({os.path.abspath(e.path) for e in entries} | set(known))
            stamp = _new_stamp(options.name, encoder, options.factory or auto_factory(n_expected, encoder.dim), frames)
            stamp.database_id = handle.database_id
            _check_trainable(VectorStore.create(encoder.dim, stamp.factory), stamp.factory, n_expected)
            write_stamp(handle.paths.manifest, stamp)
        _check_model(handle, stamp, encoder, options)
        summary.factory = stamp.factory
        with handle.db.session(write=True) as s:
            mv = catalog.get_or_create_model_version(s, version=encoder.version, name=encoder.name,
                                                     dim=encoder.dim, metric=encoder.metric, config=encoder.config)
            summary.build_id = catalog.start_build(s, options.name, mv.id, stamp.factory, summary.source)
        try:
            _run_build(handle, stamp, encoder, entries, root, options, summary, mv.id, progress, engine)
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            try:
                with handle.db.session(write=True) as s:
                    catalog.finish_build(s, summary.build_id, status, message=str(exc)[:500] or type(exc).__name__)
            except Exception:  # the database itself may be what failed; the next run marks this one interrupted
                pass
            raise


def _owned(handle: WriteHandle, stamp: IndexStamp) -> bool:
    try:
        check_owner(handle.paths, stamp, handle.db, handle.database_id)
    except BadInputError:
        return False
    return True


def _with_images(entries: Sequence[ArchiveEntry], images: Sequence[tuple[str, str, dict]],
                 summary: BuildSummary) -> list[ArchiveEntry]:
    """The entries plus the `images` (key, stem, labels) they lack: for a rebuild, those the index holds from
    elsewhere (`index add`, other archives) and those a killed rebuild had still to encode, so the rebuilt index
    has the images it had (any later build finishes a killed rebuild the same way); files gone from disk are
    listed as lost."""
    have = {os.path.abspath(e.path) for e in entries}
    out = list(entries)
    for key, stem, labels in images:
        path, frame = split_frame_key(key)  # the frames of a file come back as the file: the plan takes them again
        if path in have:
            continue
        have.add(path)
        if os.path.isfile(path):
            if frame is not None:  # the reader numbers the frames it takes
                labels = {k: v for k, v in labels.items() if k != FRAME_LABEL}
            out.append(ArchiveEntry(path=Path(path), stem=stem, rel=Path(path).name, labels=labels))
        elif path not in summary.lost:
            summary.lost.append(path)
    return out


def _forget_lost_shards(handle: WriteHandle, name: str) -> None:
    """Rows whose shard file is gone (folder deleted by hand) are dropped, so their files get encoded again."""
    with handle.db.session() as s:
        referenced = catalog.referenced_shards(s, name)
    on_disk = {shard for shard, keys in handle.shards.names().items() if "vectors" in keys}
    lost = sorted(referenced - on_disk)
    if lost:
        log.warning("index %r: %d shard files are gone; their images will be encoded again", name, len(lost))
        with handle.db.session(write=True) as s:
            catalog.delete_shard_rows(s, name, lost)


def _run_build(handle: WriteHandle, stamp: IndexStamp, encoder: ArchiveEncoder, entries: Sequence[ArchiveEntry],
               root: Path | None, options: BuildOptions, summary: BuildSummary,
               model_version_id: int, progress: Progress | None, engine: BuildEngine) -> None:
    collect_garbage(handle, stamp.name)
    _forget_lost_shards(handle, stamp.name)
    with handle.db.session() as s:
        known = {r.path: r for r in catalog.stored_vectors(s, stamp.name)}
    store, summary.faiss_rebuilt = load_store_for_write(handle.paths, stamp)
    _, synced = resync(handle, stamp, store)

    with handle.db.session(write=True) as s:
        removed = catalog.excluded_paths(s, stamp.name)
        if root is None:  # files the user named: adding one again undoes its removal, and that of its frames
            files = {os.path.abspath(e.path) for e in entries}
            back = sorted(key for key in removed if split_frame_key(key)[0] in files)
            catalog.include_paths(s, stamp.name, back)
            removed -= set(back)
    if not options.rebuild:  # any build finishes a rebuild that was killed (a rebuild merged them itself)
        entries = _with_images(entries, rebuild_list(handle.paths), summary)
    if removed:  # a removed file (its path) is left out whole, a removed frame (its key) alone
        kept = [e for e in entries if os.path.abspath(e.path) not in removed]
        summary.excluded, entries = len(entries) - len(kept), kept
    stats = ReadStats()
    work = plan(entries, known, stats, engine.hashes(entries), stamp.frames)
    todo, summary.skipped = [item for item in work.todo if item.path not in removed], work.skipped
    summary.excluded += len(work.todo) - len(todo)
    if root is not None:  # an archive scan: its labels.csv is the truth for files it skips as unchanged
        encoding = {item.path for item in todo}
        current = {key: dict(e.labels) for key, e in work.seen.items() if e.labels
                   and key in known and key not in encoding}
        if current:
            dicom = {key for key, e in work.seen.items() if key in current and is_dicom_path(e.path)}
            with handle.db.session(write=True) as s:
                summary.relabelled = catalog.refresh_labels(s, {k: v for k, v in current.items() if k not in dicom})
                # What the reader took from a DICOM file stays: its tags beneath the row, its frame number above.
                summary.relabelled += catalog.refresh_labels(s, {k: current[k] for k in dicom},
                                                             beneath=DESCRIPTIVE_TAGS + IDENTIFYING_TAGS,
                                                             above=(FRAME_LABEL,))
    writer = BatchWriter(handle, stamp, store, model_version_id=model_version_id, build_id=summary.build_id,
                         synced_vector_id=synced, checkpoint_s=options.checkpoint_s)
    if not store.is_trained:
        _check_trainable(store, stamp.factory, len(known) + len(todo))
        writer.train_at = max(1, store.training_size(len(known) + len(todo))[1] - len(known))
    if progress:
        progress(0, len(todo))
    # The encoder owns the crop/pad policy: its vectors depend on it (encoders without one crop).
    batches = engine.encoded_batches(encoder, todo, options.batch_size, stats,
                                     policy=getattr(encoder, "fit", "crop"), keep_tags=options.keep_tags)
    for items, arrays, sizes in batches:
        shapes = {k: list(v.shape[1:]) for k, v in arrays.items()}
        if not stamp.arrays:
            stamp.arrays = shapes
        elif shapes != stamp.arrays:
            raise VersionMismatchError(f"encoder arrays {shapes} differ from the index's {stamp.arrays}; "
                                       f"rebuild it: {stamp.rebuild_hint()}")
        added, replaced = writer.write(items, arrays, sizes)
        summary.added += added
        summary.replaced += replaced
        if progress:
            progress(len(items), len(todo))
    summary.bad = list(stats.bad_files)

    # A changed file that no longer decodes must not keep the vector of its old content, nor a file the frames
    # it no longer has (or no longer has as frames).
    files = {os.path.abspath(e.path) for e in entries}
    gone = {known[os.path.abspath(p)].image_id for p, _ in summary.bad if os.path.abspath(p) in known}
    gone |= {r.image_id for key, r in known.items() if key not in work.seen and split_frame_key(key)[0] in files}
    if root is not None:
        prefix = str(root) + "/"
        summary.missing = sorted(p for p in known if p.startswith(prefix) and split_frame_key(p)[0] not in files)
        if options.prune:
            gone |= {known[p].image_id for p in summary.missing}
    gone = sorted(gone)
    if gone:
        with handle.db.session(write=True) as s:
            catalog.delete_vectors(s, stamp.name, gone)
        summary.removed = len(gone)

    with handle.db.session() as s:
        rows = catalog.stored_vectors(s, stamp.name)
    report = sync_store(store, handle.shards, rows, writer.synced_id)
    if report.pending:
        raise BadInputError(f"factory {stamp.factory} needs at least {report.need} vectors to train, the index holds "
                            f"{report.pending}; add images or choose a smaller --factory (with --rebuild)")
    synced = max((r.vector_id for r in rows), default=0)
    if report.changed or synced != stamp.synced_vector_id or not handle.paths.faiss_file.is_file():
        save_index(handle.paths, store, stamp, synced)
    collect_garbage(handle, stamp.name)
    summary.total = store.ntotal
    with handle.db.session(write=True) as s:
        catalog.finish_build(s, summary.build_id, "done", n_added=summary.added, n_skipped=summary.skipped,
                             n_replaced=summary.replaced, n_removed=summary.removed, n_bad=len(summary.bad))
    handle.paths.rebuild_file.unlink(missing_ok=True)  # every image of a rebuild is in: nothing left to resume


def add_files(files: Sequence[str | Path], encoder: ArchiveEncoder, *, home=None, db_url: str | None = None,
              options: BuildOptions = BuildOptions(), progress: Progress | None = None) -> BuildSummary:
    """Index individual image files (no labels); an unchanged file is skipped, a changed one replaced."""
    from s2m_retrieval.data.image_io import input_file

    entries, seen = [], set()
    for f in files:
        path = input_file(f).resolve()  # a missing file, a folder or a symlink loop: one line, before any work
        if path not in seen:
            seen.add(path)
            entries.append(ArchiveEntry(path=path, stem=path.stem, rel=path.name))
    if not entries:
        raise BadInputError("give at least one image file")
    return build_index(None, encoder, home=home, db_url=db_url, options=options, entries=entries, progress=progress)
