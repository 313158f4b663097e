"""`esl trust server-key` and `esl trust gateway STORE/ID KEY`: who may give and take jobs.

Both work on the server's data directory (no running server needed, and safe beside one):

- ``server-key`` prints the server's Ed25519 public key (the key is made on first use, kept in
  ``{data_dir}/signing.key``): every gateway gets it as ``server_public_key``, and runs only
  job envelopes signed with it;
- ``gateway`` registers a gateway's X25519 public key (``esl gateway --show-key`` prints it):
  job keys travel sealed to it, and no job goes to a gateway without one. Audited.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from eslserver.cli.token_cmds import ConfigOpt, DataOpt, _database_path
from eslserver.config import ConfigError, load_settings

__all__ = ["register", "trust_app"]

trust_app = typer.Typer(help="The server's signing key and the gateways' keys.", no_args_is_help=True)


def server_key(data: DataOpt = None, config: ConfigOpt = None) -> None:
    """Print the server's public key (64 hex digits): every gateway's server_public_key."""
    from eslserver.signing import SigningKeyError, load_signing_key, signing_key_path

    try:
        settings = load_settings(config, overrides={"data_dir": data})
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    made = not signing_key_path(settings).exists()
    try:
        key = load_signing_key(settings)
    except SigningKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(key.public.hex())
    if made:
        typer.echo(f"(a new signing key, kept in {signing_key_path(settings)})", err=True)


def rotate_server_key(
    force: Annotated[bool, typer.Option("--force", help="Rotate although a previous key is still kept: gateways "
                                                        "that have not followed it yet are stranded.")] = False,
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Make a new signing key; the gateways follow it (the old key endorses the new one in every
    envelope until `signing.key.previous` is removed). Restart every server instance to use it."""
    from eslserver.signing import SigningKeyError, rotate_signing_key

    try:
        settings = load_settings(config, overrides={"data_dir": data})
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        old, new = rotate_signing_key(settings, force=force)
    except SigningKeyError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(new.public.hex())
    typer.echo(f"rotated: {old.public.hex()[:16]}… → {new.public.hex()[:16]}…; restart every server instance (with "
               "both key files); gateways follow at their next job (esl gateways shows SERVER_KEY); remove "
               "signing.key.previous once every gateway shows the new key", err=True)


def gateway(
    name: Annotated[str, typer.Argument(metavar="STORE/ID", help="The gateway: its store and its id.")],
    public_key: Annotated[str, typer.Argument(metavar="KEY", help="Its public key, as `esl gateway --show-key` "
                                                                  "prints it (64 hex digits).")],
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Register a gateway's public key: jobs go to it, their keys sealed to it."""
    from eslserver.auth import Actor
    from eslserver.db.database import DatabaseError, open_database
    from eslserver.trust import TrustSetupError, register_gateway_key
    from firmware_proto.trust import TrustError, key_from_hex

    store, sep, gateway_id = name.partition("/")
    if not sep or not store or not gateway_id:
        typer.echo(f"error: STORE/ID: expected a store and a gateway id such as demo/gw1, got {name!r}", err=True)
        raise typer.Exit(2)
    try:
        raw = key_from_hex(public_key, "KEY")
    except TrustError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    path = _database_path(data, config)

    async def main() -> bool:
        async with open_database(path) as db:
            return await register_gateway_key(db, store, gateway_id, raw, actor=Actor("cli", "admin"))

    try:
        changed = asyncio.run(main())
    except TrustSetupError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except DatabaseError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"gateway {store}/{gateway_id}: public key {raw.hex()} "
               + ("registered" if changed else "was already registered"), err=True)


def register(app: typer.Typer) -> None:
    """Attach ``esl trust …`` to the `esl` app."""
    trust_app.command("server-key")(server_key)
    trust_app.command("gateway")(gateway)
    trust_app.command("rotate-server-key")(rotate_server_key)
    app.add_typer(trust_app, name="trust")
