"""`esl tokens create|list|revoke`: API tokens, on the server's data directory.

These open the database file directly (no running server needed, and safe beside a running
one: SQLite WAL with a busy timeout), so ``TOKEN=$(esl tokens create --role pos)`` works in a
provisioning script. ``create`` prints the token and nothing else on stdout; it is shown
once and stored only as a hash.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Optional, TypeVar

import typer

from eslserver.auth import ROLES, AuthError, create_token, list_tokens, revoke_token
from eslserver.config import ConfigError, load_settings
from eslserver.db.database import Database, DatabaseError, open_database

__all__ = ["register", "tokens_app"]

tokens_app = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)

T = TypeVar("T")

DataOpt = Annotated[Optional[Path], typer.Option("--data", help="Data directory (default: the configured data_dir).")]
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="esl.toml to read (default: ./esl.toml if present).")]


def _database_path(data: Path | None, config: Path | None, *, init: bool | None = None) -> Path | str:
    """The server's database (`Settings.database`: its ``database_url``, else its file); for a
    file, unless `init` is true, exit 1 if it is not there (`init` None: the command has no
    ``--init``).

    A token is valid only in the database the server reads: creating a new database in the
    wrong directory would print a token the server rejects, so that takes ``--init``.
    """
    try:
        settings = load_settings(config, overrides={"data_dir": data})
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if settings.database_url is not None:
        return settings.database_url
    path = settings.database_path
    if not init and not path.exists():
        typer.echo(f"error: no eslserver database in data directory {settings.data_dir.resolve()} (no "
                   f"{path.name}): point at the server's with --data DIR (or data_dir in esl.toml, "
                   "or ESL_DATA_DIR)" + (", or add --init to create a new one there" if init is not None
                                          else ", or start the server once there first"), err=True)
        raise typer.Exit(1)
    return path


def _run(path: Path | str, action: Callable[[Database], Awaitable[T]]) -> T:
    async def main() -> T:
        async with open_database(path) as db:
            return await action(db)

    try:
        return asyncio.run(main())
    except AuthError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except DatabaseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def create(
    role: Annotated[str, typer.Option("--role", help=f"One of: {', '.join(ROLES)}.")],
    name: Annotated[Optional[str], typer.Option("--name", help="Whose token (shown in the audit log).")] = None,
    store: Annotated[Optional[list[str]], typer.Option(
        "--store", help="Restrict it to this store of the chain (repeat for several; default: every store).")] = None,
    data: DataOpt = None,
    config: ConfigOpt = None,
    init: Annotated[bool, typer.Option(
        "--init", help="Create the data directory's database if there is none (before the server's first "
                       "start).")] = False,
) -> None:
    """Create a token and print it (only it, once) on stdout."""
    if role not in ROLES:
        typer.echo(f"error: --role: expected one of {', '.join(ROLES)}, got {role!r}", err=True)
        raise typer.Exit(2)
    path = _database_path(data, config, init=init)
    if isinstance(path, Path) and not path.exists():
        typer.echo(f"note: no database at {path}; creating a new one (--init)", err=True)
    token = _run(path, lambda db: create_token(db, role, name, stores=store or None))
    typer.echo(token)


def list_(
    data: DataOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, for scripts.")] = False,
    active: Annotated[bool, typer.Option("--active", help="Leave revoked tokens out.")] = False,
) -> None:
    """List tokens (ids, roles, names; never secrets)."""
    path = _database_path(data, config)
    tokens = _run(path, lambda db: list_tokens(db, include_revoked=not active))
    if as_json:
        typer.echo(json.dumps([t.to_json() for t in tokens], indent=2))
        return
    if not tokens:
        typer.echo("no tokens", err=True)
        return
    typer.echo(f"{'ID':<12}  {'ROLE':<12}  {'CREATED':<20}  {'REVOKED':<20}  NAME")
    for t in tokens:
        revoked = t.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if t.revoked_at else "-"
        typer.echo(f"{t.id:<12}  {t.role:<12}  {t.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20}  "
                   f"{revoked:<20}  {t.name}")


def revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="Token id (from 'esl tokens list') or the token.")],
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a token: the server refuses it from its next request on."""
    path = _database_path(data, config)
    info = _run(path, lambda db: revoke_token(db, token_id))
    assert info.revoked_at is not None
    typer.echo(f"revoked {info.id} ({info.role}, {info.name}) at {info.revoked_at.isoformat()}", err=True)


def register(app: typer.Typer) -> None:
    """Attach ``esl tokens …`` to the `esl` app."""
    tokens_app.command("create")(create)
    tokens_app.command("list")(list_)
    tokens_app.command("revoke")(revoke)
    app.add_typer(tokens_app, name="tokens")
