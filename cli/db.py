"""`s2m db ...`: apply and show schema migrations (they also run by themselves on first use)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Metadata database: schema migrations.", no_args_is_help=True)

HOME = typer.Option(None, "--home", envvar="S2M_HOME", help="Home folder (default ~/.s2m).")
DB = typer.Option(None, "--db", envvar="S2M_DB_URL",
                  help="Database URL, e.g. postgresql+psycopg://user@host/db (default: SQLite HOME/s2m.db).")


def _migrate(home: Path | None, db: str | None, step, revision: str) -> None:
    """Run one migration step (`migrate.upgrade` or `migrate.downgrade`) and print the revisions it moved between."""
    from s2m_retrieval.storage import migrate, open_database
    from s2m_retrieval.storage.db import display_url

    database = open_database(home, db, migrate=False)
    try:
        before = migrate.current_revision(database)
        step(migrate)(database, revision)
        after = migrate.current_revision(database)
    finally:
        database.dispose()
    typer.echo(f"{display_url(database.url)}: {before or 'empty'} -> {after or 'empty'}")


@app.command("upgrade")
def upgrade(
    revision: str = typer.Argument("head", help="Target revision."),
    home: Path = HOME,
    db: str = DB,
) -> None:
    """Migrate the database schema up to REVISION (default: the newest)."""
    _migrate(home, db, lambda migrate: migrate.upgrade, revision)


@app.command("downgrade")
def downgrade(
    revision: str = typer.Argument(..., help="Target revision, e.g. 0001, or `base` (drops every table)."),
    home: Path = HOME,
    db: str = DB,
) -> None:
    """Revert the database schema down to REVISION (data in the tables it drops is lost)."""
    _migrate(home, db, lambda migrate: migrate.downgrade, revision)


@app.command("current")
def current(home: Path = HOME, db: str = DB) -> None:
    """Show the schema revision of the database and the newest one this version knows (read-only)."""
    from s2m_retrieval.storage import migrate, open_database
    from s2m_retrieval.storage.db import display_url, resolve_db_url, sqlite_file

    file = sqlite_file(resolve_db_url(home, db))
    if file is not None and not file.is_file():
        typer.echo(f"no database at {file} (nothing built yet)")
        return
    database = open_database(home, db, migrate=False)
    try:
        rev = migrate.current_revision(database)
    finally:
        database.dispose()
    head = migrate.head_revision()
    state = "up to date" if rev == head else "behind (run `s2m db upgrade`)" if rev else "empty"
    typer.echo(f"{display_url(database.url)}: revision {rev or 'none'}, newest {head} ({state})")
