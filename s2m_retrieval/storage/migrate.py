"""Run the Alembic migrations of the `migrations` package programmatically (no alembic.ini needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from s2m_retrieval.errors import DatabaseError
from s2m_retrieval.storage.db import display_url, translate_errors

if TYPE_CHECKING:
    from alembic.config import Config

    from s2m_retrieval.storage.db import Database


def script_location() -> Path:
    """The folder of the `migrations` package (env.py, script.py.mako, versions/)."""
    import migrations

    return Path(migrations.__file__).resolve().parent


def alembic_config(db: Database, connection=None) -> Config:
    """An Alembic Config pointing at the packaged scripts and at this database."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision the code knows."""
    from alembic.script import ScriptDirectory

    cfg = alembic_config_for_scripts()
    return ScriptDirectory.from_config(cfg).get_current_head()


def alembic_config_for_scripts() -> Config:
    """A Config that only knows the scripts (enough to read revisions)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    return cfg


def current_revision(db: Database) -> str | None:
    """The revision the database is at (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with translate_errors(db.url), db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _run(db: Database, fn, revision: str) -> None:
    """Run an Alembic command on one write connection, so SQLite takes its lock up front."""
    from alembic.util import CommandError

    with translate_errors(db.url), db.engine.execution_options(s2m_write=True).connect() as conn:
        try:
            fn(alembic_config(db, conn), revision)
        except CommandError as exc:
            raise DatabaseError(f"migration of {display_url(db.url)} to {revision!r} failed: {exc}") from None
        conn.commit()


def _is_below(revision: str, current: str | None) -> bool:
    """Whether `revision` is older than `current` (so reaching it would undo migrations)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    if current is None:
        return False
    if revision == "base":
        return True
    scripts = ScriptDirectory.from_config(alembic_config_for_scripts())
    try:
        target = scripts.get_revision(revision)
    except CommandError as exc:
        raise DatabaseError(f"unknown schema revision {revision!r}: {exc}") from None
    older = {s.revision for s in scripts.iterate_revisions(current, "base")} - {current}
    return target is not None and target.revision in older


def upgrade(db: Database, revision: str = "head") -> None:
    """Apply migrations up to `revision`; one older than the database's is refused (use `downgrade`)."""
    from alembic import command

    current = current_revision(db)
    if _is_below(revision, current):
        raise DatabaseError(f"database {display_url(db.url)} is at schema revision {current}, newer than "
                            f"{revision!r}; upgrade only goes up (`s2m db downgrade {revision}` goes down)")
    _run(db, command.upgrade, revision)


def downgrade(db: Database, revision: str = "base") -> None:
    """Revert migrations down to `revision`."""
    from alembic import command

    _run(db, command.downgrade, revision)


def ensure_schema(db: Database) -> None:
    """Upgrade an empty or older database to head; refuse one newer than this code."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config_for_scripts())
    head = scripts.get_current_head()
    current = current_revision(db)
    if current == head:
        return
    if current is not None and current not in {s.revision for s in scripts.walk_revisions()}:
        raise DatabaseError(f"database {display_url(db.url)} is at schema revision {current}, which this version "
                            f"of s2m does not know (newest: {head}); upgrade s2m-retrieval")
    upgrade(db, "head")
