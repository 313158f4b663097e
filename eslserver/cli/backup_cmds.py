"""`esl backup PATH` and `esl restore PATH`: the database and the secret key, in one file.

Both work on the data directory (``--data``, ``data_dir`` in esl.toml or ``ESL_DATA_DIR``)
with the secret key the server would use (``ESL_SECRET_KEY`` or ``secret_key_file``). A
backup can be made while the server runs; a restore goes into an empty data directory (or,
with ``--force``, over a stopped server's database and key). See `eslserver.backup`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Optional

import typer

from eslserver.config import ConfigError, Settings, load_settings
from eslserver.private_files import restrict_umask

__all__ = ["backup", "register", "restore"]

_Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="esl.toml to read (default ./esl.toml if present).")]
_Data = Annotated[Optional[Path], typer.Option("--data", help="Data directory (default: the configured data_dir).")]


def _settings(command: str, config: Path | None, data: Path | None) -> Settings:
    try:
        return load_settings(config, overrides={"data_dir": data})
    except ConfigError as exc:
        typer.echo(f"esl {command}: {exc}", err=True)
        raise typer.Exit(2) from None


def backup(path: Annotated[Path, typer.Argument(help="The backup file to write (must not exist).")],
           config: _Config = None, data: _Data = None) -> None:
    """Write the database (a consistent copy, the server may run) and the secret key into one
    file only you may read. Keep it safe: it unlocks every label's key."""
    from eslserver.backup import BackupError
    from eslserver.backup import backup as make_backup

    restrict_umask()
    settings = _settings("backup", config, data)
    try:
        info = asyncio.run(make_backup(settings, path))
    except BackupError as exc:
        typer.echo(f"esl backup: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"backed up {settings.database_path} ({info.database_bytes} bytes, schema {info.schema_version}) "
               f"and the secret key to {info.path}")


def restore(path: Annotated[Path, typer.Argument(help="A file written by esl backup.")],
            config: _Config = None, data: _Data = None,
            force: Annotated[bool, typer.Option("--force", help="Replace the database and secret key of a data "
                                                                "directory that is not empty (stop its server first).")]
            = False) -> None:
    """Put a backup's database and secret key into the data directory, then check that a
    server can open them."""
    from eslserver.backup import BackupError
    from eslserver.backup import restore as do_restore

    restrict_umask()
    settings = _settings("restore", config, data)
    try:
        info = asyncio.run(do_restore(settings, path, force=force))
    except BackupError as exc:
        typer.echo(f"esl restore: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"restored {settings.database_path} (backup of {info.created_at}, eslserver {info.eslserver}) "
               f"and its secret key; start the server on {settings.data_dir}")


def register(app: typer.Typer) -> None:
    app.command("backup")(backup)
    app.command("restore")(restore)
