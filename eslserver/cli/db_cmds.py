"""`esl db migrate-to URL`: move a data directory's SQLite database to PostgreSQL, verified.

The work is `eslserver.db_migrate`'s; this prints what it copied and proved, and what to do
next. The URL's password is never printed (`eslserver.db.database.redact`), not even inside
an error message that quotes the URL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Optional
from urllib.parse import unquote, urlsplit

import typer

from eslserver.config import ConfigError, load_settings
from eslserver.db.database import DatabaseError, is_database_url, redact
from eslserver.instance_lock import InstanceLock
from eslserver.startup import StartupError

__all__ = ["db_app", "migrate_to", "register"]

db_app = typer.Typer(help="The server's database: move it from SQLite to PostgreSQL.", no_args_is_help=True)

DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Data directory (default: the configured data_dir).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="esl.toml to read (default: ./esl.toml if present).")]


def _fail(message: str, url: str, status: int) -> typer.Exit:
    """Print `message` as one line on stderr, without the URL's password wherever it appears."""
    typer.echo(f"error: {_without_password(message, url)}", err=True)
    return typer.Exit(status)


def _without_password(text: str, url: str) -> str:
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    text = text.replace(url, _redact(url)) if password else text
    for secret in {password, unquote(password)} if password else ():
        text = text.replace(secret, "***")
    return " ".join(text.split())


def _check_url(url: str) -> None:
    """Exit 2 on a URL that is not a PostgreSQL database's (naming its scheme only: the rest may
    hold a password)."""
    if not is_database_url(url):
        shown = url.split("://", 1)[0] + "://…" if "://" in url else "no URL"
        raise _fail(f"URL: expected postgresql://user@host:port/database, got {shown}", url, 2)
    try:
        urlsplit(url).port  # noqa: B018 - a port that is not a number raises here
    except ValueError as exc:
        raise _fail(f"URL {_redact(url)}: {exc}", url, 2) from None


def _redact(url: str) -> str:
    """`redact`, or only the scheme when the URL does not even parse."""
    try:
        return redact(url)
    except ValueError:
        return url.split("://", 1)[0] + "://…"


class _Progress:
    """A line on stderr per tenth of a large table, so that a long copy shows it is moving."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.shown: dict[str, int] = {}

    def __call__(self, table: str, done: int, total: int) -> None:
        if total < 10 * self.every or done == 0:
            return
        tenth = done * 10 // total
        if tenth > self.shown.get(table, 0):
            self.shown[table] = tenth
            typer.echo(f"copying {table}: {done}/{total} rows", err=True)


def migrate_to(
    url: Annotated[str, typer.Argument(metavar="URL", help="postgresql://user[:password]@host[:port]/database: "
                                                           "an empty database (the schema is made if missing).")],
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Copy the data directory's SQLite database (esl.db) into an empty PostgreSQL database,
    in one transaction, and check the copy before committing it: every table's row count,
    and the price history, label keys and secret-key check identical row for row.

    Stop the server on this data directory first: it must not run on the SQLite file during
    the copy (its writes wait for the copy, then fail), nor after it (what it writes there
    would not be in PostgreSQL). Label keys are copied sealed: the server started on
    PostgreSQL needs this data directory's secret key (secret.key, or the same
    ESL_SECRET_KEY). A target holding any row is refused; nothing is merged.
    """
    from eslserver.db_migrate import MigrationError
    from eslserver.db.postgres import PostgresDatabase  # asyncpg: not part of the gateway install
    from eslserver.db.sqlite import SqliteDatabase
    from eslserver.db_migrate import migrate_to as run

    _check_url(url)
    try:
        settings = load_settings(config, overrides={"data_dir": data})
    except ConfigError as exc:
        raise _fail(str(exc), url, 2) from None
    source = settings.database_path
    if not source.is_file():
        raise _fail(f"no eslserver database in data directory {settings.data_dir.resolve()} (no {source.name}): "
                    "point at the server's with --data DIR (or data_dir in esl.toml, or ESL_DATA_DIR)", url, 1)
    engine_errors = PostgresDatabase.errors + SqliteDatabase.errors
    lock = InstanceLock(settings.data_dir)  # no server may write the file while it is copied
    try:
        lock.acquire()
        report = asyncio.run(run(source, url, progress=_Progress(500)))
    except StartupError as exc:
        raise _fail(f"migrate-to: {exc}", url, 1) from None
    except (MigrationError, DatabaseError, LookupError, *engine_errors) as exc:
        raise _fail(f"migrate-to: {exc}", url, 1) from None
    finally:
        lock.release()
    typer.echo(f"copied {report.source} to {report.target} (schema version {report.schema_version}) "
               f"in {report.seconds:.1f} s:")
    width = max((len(t) for t in report.rows), default=0)
    for table, rows in report.rows.items():
        typer.echo(f"  {table:<{width}}  {rows:>9}")
    typer.echo(f"verified: {len(report.rows)} tables, {report.total_rows} rows, price history and keys identical")
    key = "ESL_SECRET_KEY" if settings.secret_key is not None else f"the secret key file {settings.key_file}"
    typer.echo(f"the label keys were copied sealed: they open under this data directory's secret key ({key}).")
    typer.echo(f"next: stop using {source}; start the server with --database URL (or database_url in esl.toml, "
               f"or ESL_DATABASE_URL) and the same data directory (--data {settings.data_dir}) for its secret key"
               + (" and ESL_SECRET_KEY" if settings.secret_key is not None else ""))


def register(app: typer.Typer) -> None:
    """Attach ``esl db …`` to the `esl` app."""
    db_app.command("migrate-to")(migrate_to)
    app.add_typer(db_app, name="db")
