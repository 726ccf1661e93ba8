"""Home folder, database URL, engines (SQLite tuned for one writer + readers), sessions, migrations."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from s2m_retrieval.errors import DatabaseError, DatabaseLockedError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

DEFAULT_HOME = "~/.s2m"
DB_FILE = "s2m.db"
# Seconds a writer waits for SQLite's lock before giving up with DatabaseLockedError.
DEFAULT_BUSY_TIMEOUT_S = 30.0


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """The home folder: the argument, else $S2M_HOME, else ~/.s2m (not created here)."""
    raw = home if home is not None else os.environ.get("S2M_HOME") or DEFAULT_HOME
    return Path(raw).expanduser().resolve()


def resolve_db_url(home: str | os.PathLike | None = None, url: str | None = None) -> str:
    """The database URL: the argument, else $S2M_DB_URL, else SQLite `s2m.db` in the home folder."""
    url = url or os.environ.get("S2M_DB_URL")
    if url:
        return url
    return f"sqlite:///{resolve_home(home) / DB_FILE}"


def display_url(url: str) -> str:
    """A URL safe to print (password hidden)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # a malformed URL is reported by make_engine; show it as given
        return url


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other backends and in-memory databases)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # make_engine reports a malformed URL
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser()


def busy_timeout_s() -> float:
    """SQLite busy timeout: $S2M_DB_TIMEOUT seconds, else the default."""
    raw = os.environ.get("S2M_DB_TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_BUSY_TIMEOUT_S
    except ValueError:
        raise DatabaseError(f"S2M_DB_TIMEOUT must be a number of seconds, got {raw!r}") from None


def make_engine(url: str, *, timeout_s: float | None = None) -> Engine:
    """An engine for `url`; SQLite gets WAL, a busy timeout, foreign keys and explicit BEGINs."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return create_engine(parsed, pool_pre_ping=True)
    except Exception as exc:  # unparsable URL, unknown dialect, driver not installed
        raise DatabaseError(f"bad database URL {display_url(url)}: {str(exc).splitlines()[0][:160]}") from None

    timeout = busy_timeout_s() if timeout_s is None else timeout_s
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, connect_args={"timeout": timeout})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy emit BEGIN itself (pysqlite's implicit BEGIN comes too late for DDL and locking).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # Writers take the lock up front: a deferred read->write upgrade in WAL fails at once, without waiting.
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("s2m_write") else "BEGIN")

    return engine


def is_lock_error(exc: BaseException) -> bool:
    """Whether a driver error means 'another process holds the lock'."""
    text = str(getattr(exc, "orig", exc)).lower()
    return "database is locked" in text or "database table is locked" in text or "lock timeout" in text


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn driver errors into one-line domain errors (locked, cannot connect, a damaged SQLite file)."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        yield
    except DBAPIError as exc:
        if isinstance(exc, OperationalError) and is_lock_error(exc):
            raise DatabaseLockedError(
                f"database {display_url(url)} is locked by another process; wait for it to finish "
                f"(or raise S2M_DB_TIMEOUT, now {busy_timeout_s():g} s) and rerun") from None
        first = str(getattr(exc, "orig", exc)).strip().splitlines()
        text = first[0][:200] if first else type(exc).__name__
        damaged = sqlite_file(url) if ("malformed" in text or "not a database" in text) else None
        if damaged is not None:
            raise DatabaseError(f"the SQLite database {damaged} is damaged ({text}); nothing was changed: restore "
                                "it from a backup, or move it aside and rebuild the indexes with --rebuild") from None
        raise DatabaseError(f"database {display_url(url)}: {text}") from None


@dataclass
class Database:
    """An engine plus session factory for one database URL."""

    url: str
    engine: Engine

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        from sqlalchemy.orm import Session

        bind = self.engine.execution_options(s2m_write=True) if write else self.engine
        with translate_errors(self.url):
            with Session(bind=bind, expire_on_commit=False) as session:
                try:
                    yield session
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
