"""SQL storage: migrations up/down and against the models (SQLite; PostgreSQL when configured), locking, home."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import inspect, select

from s2m_retrieval.errors import DatabaseError, DatabaseLockedError
from s2m_retrieval.storage import catalog, migrate
from s2m_retrieval.storage.catalog import ImageRecord
from s2m_retrieval.storage import open_database
from s2m_retrieval.storage.db import resolve_db_url, resolve_home
from s2m_retrieval.storage.models import Base, Image, Vector

TABLES = {"images", "model_versions", "index_builds", "vectors", "meta"}


def _diffs(db) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with db.engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)


def test_migrations_up_down_match_models(db_url):
    db = open_database(url=db_url, migrate=False)
    try:
        assert migrate.current_revision(db) is None
        migrate.upgrade(db)
        assert migrate.current_revision(db) == migrate.head_revision()
        assert TABLES <= set(inspect(db.engine).get_table_names())
        assert _diffs(db) == []
        with db.session() as s:
            identity = catalog.database_id(s)
        assert len(identity) == 32
        migrate.downgrade(db, "0001")
        assert "meta" not in inspect(db.engine).get_table_names()
        migrate.upgrade(db)
        with db.session() as s:
            assert catalog.database_id(s) != identity  # a fresh identity: 0002 ran again
        migrate.downgrade(db, "base")
        assert migrate.current_revision(db) is None
        assert not TABLES & set(inspect(db.engine).get_table_names())
        migrate.upgrade(db)
        assert _diffs(db) == []
    finally:
        db.dispose()


def test_catalog_upsert_and_replace(db_url):
    db = open_database(url=db_url)
    try:
        with db.session(write=True) as s:
            mv = catalog.get_or_create_model_version(s, version="v1", name="fake", dim=4, metric="m", config={"a": 1})
            rec = ImageRecord(path="/a/x.png", stem="x", sha256="0" * 64, width=8, height=8, labels={"grade": 2})
            (iid, vid, replaced), = catalog.record_batch(s, "default", mv.id, "000001-000000", [rec])
        assert not replaced
        with db.session(write=True) as s:
            changed = ImageRecord(path="/a/x.png", stem="x", sha256="1" * 64, width=8, height=8)
            (iid2, vid2, replaced2), = catalog.record_batch(s, "default", mv.id, "000002-000000", [changed])
        assert (iid2, replaced2) == (iid, True) and vid2 > vid
        with db.session() as s:
            rows = catalog.stored_vectors(s, "default")
            assert [(r.image_id, r.shard, r.sha256[0]) for r in rows] == [(iid, "000002-000000", "1")]
            assert s.scalar(select(Image.labels).where(Image.id == iid)) == {}
        with db.session(write=True) as s:
            assert catalog.delete_vectors(s, "default", [iid]) == 1
        with db.session() as s:  # the image row goes with its last vector
            assert s.scalars(select(Image)).all() == [] and s.scalars(select(Vector)).all() == []
    finally:
        db.dispose()


def test_build_round_trip_on_postgres(postgres_url, phantom_archive, tmp_path):
    from s2m_retrieval.testing.fake_encoder import FakeEncoder
    from s2m_retrieval.ingest.report import verify_index
    from s2m_retrieval.ingest.runner import BuildOptions, build_index

    enc = FakeEncoder()
    first = build_index(phantom_archive, enc, home=tmp_path, db_url=postgres_url, options=BuildOptions(batch_size=8))
    again = build_index(phantom_archive, enc, home=tmp_path, db_url=postgres_url)
    assert (first.added, again.skipped, again.added) == (24, 24, 0)
    assert verify_index(home=tmp_path, db_url=postgres_url).ok
    assert not (tmp_path / "s2m.db").exists()


def test_first_use_creates_and_migrates_sqlite(tmp_path):
    home = tmp_path / "home"
    db = open_database(home)
    try:
        assert (home / "s2m.db").is_file()
        assert migrate.current_revision(db) == migrate.head_revision()
        with db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    finally:
        db.dispose()


def test_home_and_url_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("S2M_DB_URL", raising=False)
    monkeypatch.setenv("S2M_HOME", str(tmp_path / "h"))
    assert resolve_home() == tmp_path / "h"
    assert resolve_db_url() == f"sqlite:///{tmp_path / 'h' / 's2m.db'}"
    assert resolve_home(tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("S2M_DB_URL", "postgresql+psycopg://u:secret@localhost/s2m")
    assert resolve_db_url(tmp_path) == "postgresql+psycopg://u:secret@localhost/s2m"
    assert resolve_db_url(tmp_path, "sqlite:///other.db") == "sqlite:///other.db"


def test_locked_database_is_one_line_error(tmp_path):
    open_database(tmp_path).dispose()
    holder = sqlite3.connect(tmp_path / "s2m.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        db = open_database(tmp_path, timeout_s=0.1)
        with pytest.raises(DatabaseLockedError) as err:
            with db.session(write=True) as s:
                catalog.get_or_create_model_version(s, version="v", name="n", dim=1, metric="m", config={})
        db.dispose()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert "is locked" in str(err.value) and "\n" not in str(err.value)


def test_newer_schema_is_refused(tmp_path):
    open_database(tmp_path).dispose()
    with sqlite3.connect(tmp_path / "s2m.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
    with pytest.raises(DatabaseError, match="does not know"):
        open_database(tmp_path)


def test_bad_url_is_one_line_error():
    with pytest.raises(DatabaseError, match="bad database URL"):
        open_database(url="nonsense://")


def test_cli_db_current_and_upgrade(runner, tmp_path):
    from cli.main import app

    home = tmp_path / "home"
    result = runner.invoke(app, ["db", "current", "--home", str(home)])
    assert result.exit_code == 0 and "no database at" in result.stdout and "nothing built yet" in result.stdout
    assert not home.exists()  # read-only: no file, no folder
    result = runner.invoke(app, ["db", "upgrade", "--home", str(home)])
    assert result.exit_code == 0 and f"empty -> {migrate.head_revision()}" in result.stdout
    result = runner.invoke(app, ["db", "current", "--home", str(home)])
    assert "up to date" in result.stdout

    for target in ("base", "0001"):
        result = runner.invoke(app, ["db", "upgrade", target, "--home", str(home)])
        assert isinstance(result.exception, DatabaseError) and "only goes up" in str(result.exception)
    result = runner.invoke(app, ["db", "downgrade", "0001", "--home", str(home)])
    assert result.exit_code == 0 and f"{migrate.head_revision()} -> 0001" in result.stdout
    result = runner.invoke(app, ["db", "upgrade", "--home", str(home)])
    assert result.exit_code == 0 and f"0001 -> {migrate.head_revision()}" in result.stdout
