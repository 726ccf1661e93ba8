"""SQL metadata storage: typed models, engines and sessions, the catalog (every SQL statement of the project),
Alembic migrations; `open_database` opens a database and brings its schema up to date.

May import: `errors` and the `migrations` package only.
"""

from __future__ import annotations

import os

from s2m_retrieval.storage.db import Database, make_engine, resolve_db_url
from s2m_retrieval.storage.migrate import ensure_schema


def open_database(home: str | os.PathLike | None = None, url: str | None = None, *, migrate: bool = True,
                  timeout_s: float | None = None) -> Database:
    """Open the database, upgrading its schema to the latest migration on first use."""
    url = resolve_db_url(home, url)
    db = Database(url=url, engine=make_engine(url, timeout_s=timeout_s))
    if migrate:
        try:
            ensure_schema(db)
        except BaseException:
            db.dispose()
            raise
    return db
