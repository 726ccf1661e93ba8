"""The SQL schema as typed SQLAlchemy 2 models; Alembic migrations create and upgrade it."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints, so migrations can drop and alter them by name on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSONB on PostgreSQL so metadata filters can use its operators; plain JSON text elsewhere.
JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")


def utcnow() -> datetime:
    """Timezone-aware now in UTC (the one clock every row uses)."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base holding the metadata Alembic compares against."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Meta(Base):
    """Key/value facts about the database itself, e.g. its random `database_id`."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Image(Base):
    """One archive file; its id is also its FAISS id in every index."""

    __tablename__ = "images"
    # AUTOINCREMENT on SQLite: ids of deleted images are never reused, so a stale FAISS id can't alias a new image.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(4096), unique=True)
    stem: Mapped[str] = mapped_column(String(1024), index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    labels: Mapped[dict] = mapped_column(JSONType, default=dict)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """A model (encoder) version stamp: hash of weights + config, and the perceptual metric it pairs with."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    dim: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict] = mapped_column(JSONType, default=dict)
    metric: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IndexBuild(Base):
    """One run of `s2m index build/add/remove` on a named index, with its counts and outcome."""

    __tablename__ = "index_builds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    index_name: Mapped[str] = mapped_column(String(128), index=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    factory: Mapped[str] = mapped_column(String(256))
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    n_added: Mapped[int] = mapped_column(Integer, default=0)
    n_skipped: Mapped[int] = mapped_column(Integer, default=0)
    n_replaced: Mapped[int] = mapped_column(Integer, default=0)
    n_removed: Mapped[int] = mapped_column(Integer, default=0)
    n_bad: Mapped[int] = mapped_column(Integer, default=0)
    # running | done | failed | interrupted (a killed run is marked interrupted by the next one)
    status: Mapped[str] = mapped_column(String(16), default="running")
    message: Mapped[str | None] = mapped_column(Text, nullable=True)


class Vector(Base):
    """Where the stored vector of an image under an index lives: shard file + row."""

    __tablename__ = "vectors"
    __table_args__ = (
        UniqueConstraint("image_id", "index_name"),
        Index("ix_vectors_index_name_shard", "index_name", "shard"),
        {"sqlite_autoincrement": True},
    )

    # Monotonic per index (one writer at a time): the FAISS manifest records the last id it reflects.
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    index_name: Mapped[str] = mapped_column(String(128))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    shard: Mapped[str] = mapped_column(String(64))
    row: Mapped[int] = mapped_column(Integer)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RemovedImage(Base):
    """A path the user removed from an index (`s2m index remove`): builds and rebuilds of the index leave it out
    until `s2m index add` names it again."""

    __tablename__ = "removed_images"
    __table_args__ = (UniqueConstraint("index_name", "path"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    index_name: Mapped[str] = mapped_column(String(128))
    path: Mapped[str] = mapped_column(String(4096))
    removed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
