"""SQL side of an index: model versions, image rows, vector locations, build records."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, exists, func, insert, or_, select, update
from sqlalchemy.orm import Session

from s2m_retrieval.storage.models import Image, IndexBuild, Meta, ModelVersion, RemovedImage, Vector, utcnow

# Bound on bound parameters per statement (SQLite's limit is 32766; stay far below it).
CHUNK = 500


def _chunks(items: Sequence, size: int = CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@dataclass(frozen=True)
class ImageRecord:
    """What a build knows of one archive file before storing it."""

    path: str
    stem: str
    sha256: str
    width: int
    height: int
    labels: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)  # one per image of an archive: no per-object dict
class StoredVector:
    """One vector row of an index, joined with its image path."""

    vector_id: int
    image_id: int
    path: str
    sha256: str
    shard: str
    row: int
    model_version_id: int


def database_id(session: Session) -> str:
    """This database's random identity (made by migration 0002; created here if someone deleted it)."""
    value = session.scalar(select(Meta.value).where(Meta.key == "database_id"))
    if value is None:
        value = uuid.uuid4().hex
        session.add(Meta(key="database_id", value=value))
        session.flush()
    return value


def get_or_create_model_version(session: Session, *, version: str, name: str, dim: int, metric: str,
                                config: dict) -> ModelVersion:
    """The model_versions row of `version`, created on first use."""
    row = session.scalars(select(ModelVersion).where(ModelVersion.version == version)).one_or_none()
    if row is None:
        row = ModelVersion(version=version, name=name, dim=dim, metric=metric, config=config)
        session.add(row)
        session.flush()
    return row


def stored_vectors(session: Session, index_name: str) -> list[StoredVector]:
    """Every vector row of an index (with image paths), ordered by vector id."""
    stmt = (select(Vector.id, Vector.image_id, Image.path, Vector.sha256, Vector.shard, Vector.row,
                   Vector.model_version_id)
            .join(Image, Image.id == Vector.image_id)
            .where(Vector.index_name == index_name).order_by(Vector.id))
    return [StoredVector(*r) for r in session.execute(stmt)]


def record_batch(session: Session, index_name: str, model_version_id: int, shard: str,
                 records: Sequence[ImageRecord]) -> list[tuple[int, int, bool]]:
    """Upsert images and (re)point their vectors at `shard` rows 0..B-1; returns (image_id, vector_id, replaced)."""
    paths = [r.path for r in records]
    ids = dict(session.execute(select(Image.path, Image.id).where(Image.path.in_(paths))).all())
    changed = [{"id": ids[r.path], "stem": r.stem, "sha256": r.sha256, "width": r.width, "height": r.height,
                "labels": r.labels} for r in records if r.path in ids]
    if changed:
        session.execute(update(Image), changed)  # bulk UPDATE by primary key
    fresh = [{"path": r.path, "stem": r.stem, "sha256": r.sha256, "width": r.width, "height": r.height,
              "labels": r.labels, "added_at": utcnow()} for r in records if r.path not in ids]
    if fresh:  # RETURNING rows carry their key (path / image_id), so their order does not matter
        ids.update((path, iid) for iid, path in session.execute(
            insert(Image).returning(Image.id, Image.path), fresh))
    image_ids = [ids[p] for p in paths]
    old = set(session.scalars(select(Vector.image_id).where(Vector.index_name == index_name,
                                                            Vector.image_id.in_(image_ids))))
    if old:
        session.execute(delete(Vector).where(Vector.index_name == index_name, Vector.image_id.in_(list(old))))
    now = utcnow()
    rows = [{"image_id": iid, "index_name": index_name, "model_version_id": model_version_id, "sha256": rec.sha256,
             "shard": shard, "row": i, "added_at": now} for i, (iid, rec) in enumerate(zip(image_ids, records))]
    vector_ids = dict(session.execute(
        insert(Vector).returning(Vector.image_id, Vector.id), rows).all())
    return [(iid, vector_ids[iid], iid in old) for iid in image_ids]


def delete_vectors(session: Session, index_name: str, image_ids: Sequence[int]) -> int:
    """Delete an index's vectors of these images, then images no index refers to any more; returns rows gone."""
    gone = 0
    for chunk in _chunks(list(image_ids)):
        gone += session.execute(delete(Vector).where(Vector.index_name == index_name,
                                                     Vector.image_id.in_(chunk))).rowcount
        session.execute(delete(Image).where(Image.id.in_(chunk), ~exists().where(Vector.image_id == Image.id)))
    return gone


def delete_index(session: Session, index_name: str) -> int:
    """Delete every vector row of an index (and orphaned images); returns vector rows deleted."""
    ids = list(session.scalars(select(Vector.image_id).where(Vector.index_name == index_name)))
    return delete_vectors(session, index_name, ids)


def referenced_shards(session: Session, index_name: str) -> set[str]:
    """Shard names some vector row of the index points at."""
    return set(session.scalars(select(Vector.shard).where(Vector.index_name == index_name).distinct()))


def delete_shard_rows(session: Session, index_name: str, shards: Sequence[str]) -> list[int]:
    """Delete the vector rows pointing into these shards (files lost); returns their image ids."""
    ids = []
    for chunk in _chunks(list(shards)):
        ids += session.scalars(select(Vector.image_id).where(Vector.index_name == index_name,
                                                              Vector.shard.in_(chunk))).all()
    delete_vectors(session, index_name, ids)
    return ids


def count_vectors(session: Session, index_name: str) -> int:
    """Number of vector rows of an index."""
    return session.scalar(select(func.count()).select_from(Vector).where(Vector.index_name == index_name)) or 0


def indexed_images(session: Session, index_name: str) -> list[tuple[str, str, dict]]:
    """(path, stem, labels) of every image the index holds, by path."""
    stmt = (select(Image.path, Image.stem, Image.labels).join(Vector, Vector.image_id == Image.id)
            .where(Vector.index_name == index_name).order_by(Image.path))
    return [(p, stem, dict(labels or {})) for p, stem, labels in session.execute(stmt)]


def exclude_paths(session: Session, index_name: str, paths: Iterable[str]) -> None:
    """Record paths the user removed from an index, so that later builds of it leave them out."""
    have = excluded_paths(session, index_name)
    fresh = sorted(set(paths) - have)
    if fresh:
        now = utcnow()
        session.execute(insert(RemovedImage), [{"index_name": index_name, "path": p, "removed_at": now}
                                               for p in fresh])


def excluded_paths(session: Session, index_name: str) -> set[str]:
    """Paths removed from an index by the user (builds leave them out)."""
    return set(session.scalars(select(RemovedImage.path).where(RemovedImage.index_name == index_name)))


def include_paths(session: Session, index_name: str, paths: Sequence[str]) -> int:
    """Forget removals of these paths (the user adds them back); returns how many were removed before."""
    gone = 0
    for chunk in _chunks(list(paths)):
        gone += session.execute(delete(RemovedImage).where(RemovedImage.index_name == index_name,
                                                           RemovedImage.path.in_(chunk))).rowcount
    return gone


def refresh_labels(session: Session, labels_by_path: dict[str, dict], *, beneath: Collection[str] = (),
                   above: Collection[str] = ()) -> int:
    """Give stored images the labels their archive's labels.csv has now; returns how many rows changed.

    Stored labels named in `beneath` (read from the file itself) are kept where the row has no such column, those
    in `above` are kept over the row's.
    """
    changed = []
    paths = list(labels_by_path)
    for chunk in _chunks(paths):
        for image_id, path, labels in session.execute(
                select(Image.id, Image.path, Image.labels).where(Image.path.in_(list(chunk)))):
            labels = dict(labels or {})
            fresh = {**{k: v for k, v in labels.items() if k in beneath}, **labels_by_path[path],
                     **{k: v for k, v in labels.items() if k in above}}
            if labels != fresh:
                changed.append({"id": image_id, "labels": fresh})
    if changed:
        session.execute(update(Image), changed)  # bulk UPDATE by primary key
    return len(changed)


def update_build_counts(session: Session, build_id: int, **counts: int) -> None:
    """Counts of a build so far (kept current while it runs, so a killed build shows what it committed)."""
    session.execute(update(IndexBuild).where(IndexBuild.id == build_id).values(**counts))


MAX_IMAGE_ID = 2**63 - 1  # SQL's BIGINT / SQLite's INTEGER


def as_image_id(key: int | str) -> int | None:
    """The image id a user key means (an int, or a string of digits, within SQL's 64-bit range), else None: the
    one id parser of the CLI, the service and removals (a longer number names no image, it is no error)."""
    if isinstance(key, str):
        key = key.strip()
        if not key.isascii() or not key.isdigit():
            return None
        key = int(key)
    return key if isinstance(key, int) and 0 <= key <= MAX_IMAGE_ID else None


def find_image(session: Session, index_name: str, key: int | Sequence[str]) -> int | None:
    """The image id, having a vector in the index, of an id or of any of some candidate paths."""
    if isinstance(key, int):
        key = as_image_id(key)
        if key is None:
            return None
    cond = Image.id == key if isinstance(key, int) else Image.path.in_(list(key))
    return session.scalar(select(Image.id).join(Vector, Vector.image_id == Image.id)
                          .where(cond, Vector.index_name == index_name).limit(1))


def match_images(session: Session, index_name: str, key: str, paths: Sequence[str],
                 prefixes: Sequence[str] = ()) -> dict[int, str]:
    """Images of the index a user key names: internal id, one of `paths`, a stored path beginning with one of
    `prefixes` (the frames of a file), file stem or labels `id`; {id: path}."""
    conds = [Image.path.in_(list(paths)), Image.stem == key, Image.labels["id"].as_string() == key]
    conds += [Image.path.startswith(prefix, autoescape=True) for prefix in prefixes]
    if as_image_id(key) is not None:
        conds.append(Image.id == as_image_id(key))
    stmt = (select(Image.id, Image.path).join(Vector, Vector.image_id == Image.id)
            .where(or_(*conds), Vector.index_name == index_name))
    return dict(session.execute(stmt).all())


def start_build(session: Session, index_name: str, model_version_id: int, factory: str, source: str) -> int:
    """Record a new run; earlier runs still marked running were killed (the caller holds the lock)."""
    session.execute(update(IndexBuild).where(IndexBuild.index_name == index_name, IndexBuild.status == "running")
                    .values(status="interrupted", message="process ended without finishing; resumed by a later run"))
    build = IndexBuild(index_name=index_name, model_version_id=model_version_id, factory=factory, source=source)
    session.add(build)
    session.flush()
    return build.id


def finish_build(session: Session, build_id: int, status: str, message: str | None = None, **counts: int) -> None:
    """Close a run with its outcome and counts (n_added, n_skipped, n_replaced, n_removed, n_bad)."""
    session.execute(update(IndexBuild).where(IndexBuild.id == build_id)
                    .values(status=status, message=message, finished_at=utcnow(), **counts))


def recent_builds(session: Session, index_name: str, limit: int = 5) -> list[IndexBuild]:
    """The latest runs on an index, newest first."""
    return list(session.scalars(select(IndexBuild).where(IndexBuild.index_name == index_name)
                                .order_by(IndexBuild.id.desc()).limit(limit)))


def model_config(session: Session, version: str) -> dict | None:
    """The config recorded for a model version (what an index's stored arrays depend on), None if unknown."""
    config = session.scalar(select(ModelVersion.config).where(ModelVersion.version == version))
    return config if isinstance(config, dict) else None


def model_versions_of(session: Session, index_name: str) -> list[str]:
    """Distinct model version hashes the vectors of an index were made with."""
    stmt = (select(ModelVersion.version).join(Vector, Vector.model_version_id == ModelVersion.id)
            .where(Vector.index_name == index_name).distinct())
    return sorted(session.scalars(stmt))


# --- reads of the query side (the engine, filters, evaluation, the service's views) ---------------------------

def index_entries(session: Session, index_name: str) -> list[tuple[int, str, dict, str, int]]:
    """(image id, path, labels, shard, row) of every image of an index, by image id."""
    stmt = (select(Image.id, Image.path, Image.labels, Vector.shard, Vector.row)
            .join(Vector, Vector.image_id == Image.id).where(Vector.index_name == index_name).order_by(Image.id))
    return [(iid, path, labels or {}, shard, row) for iid, path, labels, shard, row in session.execute(stmt)]


def entry_locations(session: Session, index_name: str, image_ids: Sequence[int]) -> dict[int, tuple[str, str, dict, int]]:
    """image id -> (shard, path, labels, row) for those of `image_ids` still in the index."""
    out = {}
    for part in _chunks([int(i) for i in image_ids]):
        rows = session.execute(select(Image.id, Vector.shard, Image.path, Image.labels, Vector.row)
                               .join(Vector, Vector.image_id == Image.id)
                               .where(Vector.index_name == index_name, Image.id.in_(part)))
        out.update((iid, (shard, path, labels or {}, row)) for iid, shard, path, labels, row in rows)
    return out


def vector_locations(session: Session, index_name: str, image_ids: Sequence[int]) -> dict[int, tuple[str, int]]:
    """image id -> (shard, row) of the stored arrays, for those of `image_ids` the index holds."""
    out = {}
    for part in _chunks([int(i) for i in image_ids]):
        found = session.execute(select(Vector.image_id, Vector.shard, Vector.row)
                                .where(Vector.index_name == index_name, Vector.image_id.in_(part)))
        out.update((iid, (shard, row)) for iid, shard, row in found)
    return out


def image_rows(session: Session, image_ids: Sequence[int]) -> dict[int, dict]:
    """image id -> metadata (id, path, stem, width, height, labels) of these ids."""
    out = {}
    for part in _chunks([int(i) for i in image_ids]):
        for img in session.scalars(select(Image).where(Image.id.in_(part))):
            out[img.id] = {"id": img.id, "path": img.path, "stem": img.stem, "width": img.width,
                           "height": img.height, "labels": img.labels}
    return out


def sample_labels(session: Session, index_name: str, limit: int) -> list[dict]:
    """The labels of up to `limit` images of an index (to describe its label columns)."""
    stmt = (select(Image.labels).join(Vector, Vector.image_id == Image.id)
            .where(Vector.index_name == index_name).limit(limit))
    return [labels or {} for labels in session.scalars(stmt)]


def label_values(session: Session, index_name: str, column: str) -> list[tuple[int, str | None, object]]:
    """(image id, JSON type, value) of one labels key over the index's images, by image id; the JSON type is
    SQLite's json_type or PostgreSQL's jsonb_typeof (None where the key is absent)."""
    from sqlalchemy import String, literal

    from s2m_retrieval.errors import BadInputError

    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        path = f'$."{column}"'
        kind, value = func.json_type(Image.labels, path), func.json_extract(Image.labels, path)
    elif dialect == "postgresql":
        key = literal(column, String)  # a JSON-typed bind would be serialised to '"key"'
        kind = func.jsonb_typeof(Image.labels.op("->")(key))
        value = Image.labels.op("->>", return_type=String)(key)
    else:
        raise BadInputError(f"--where filters support SQLite and PostgreSQL databases, not {dialect}")
    stmt = (select(Image.id, kind, value).join(Vector, Vector.image_id == Image.id)
            .where(Vector.index_name == index_name).order_by(Image.id))
    return [tuple(row) for row in session.execute(stmt)]
