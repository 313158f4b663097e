"""MQTT identities on the server's data directory: ``esl gateways add|revoke``, ``esl identities
add|list|revoke`` and ``esl broker-config``.

Like ``esl tokens``, these open the database file directly (no running server needed, and
safe beside one: a running server reads the identities again within a second and its embedded
broker applies them at once). A new identity's password is printed once, on stdout, and stored
only as a hash. ``esl broker-config --out DIR`` writes Mosquitto's ``passwd`` and ``acl`` files
(0600) for a store that runs its own Mosquitto; run it again after every change of identities,
then reload Mosquitto (docs/operations.md, "TLS and access rules").

``esl gateways`` alone still lists the gateways a running server knows (`tech_cmds.gateways`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from eslserver.auth import _local_actor
from eslserver.cli.tech_common import JsonOpt, ServerOpt, StoreOpt, TokenOpt
from eslserver.cli.token_cmds import ConfigOpt, DataOpt, _database_path
from eslserver.cli.token_cmds import _run as run_on_database
from eslserver.config import ConfigError, Settings, load_settings
from eslserver.db.database import Database
from eslserver.identities import (
    Credentials,
    IdentityInfo,
    add_identity,
    ensure_server_identity,
    list_identities,
    load_snapshot,
    revoke_identity,
    server_password,
)
from eslserver.mqtt_access import Identity, IdentityError, Role
from eslserver.private_files import private_dir, write_private
from eslserver.startup import StartupError
from eslserver.timeutil import iso, utcnow

__all__ = ["register"]

T = TypeVar("T")

gateways_app = typer.Typer(help="Gateways: list them (a running server's view), register or revoke one.",
                           invoke_without_command=True)
identities_app = typer.Typer(help="MQTT identities of POS tills and integrations (and every other): add, list, "
                                  "revoke.", no_args_is_help=True)

_CLIENT_ROLES = (Role.POS.value, Role.INTEGRATION.value)
ResetOpt = Annotated[bool, typer.Option("--reset", help="Give an existing identity a new password (the old one "
                                                        "stops working at once).")]
PrintJson = Annotated[bool, typer.Option("--json", help="Print the user name and password as one JSON object.")]


def _settings(data: Path | None, config: Path | None) -> Settings:
    try:
        return load_settings(config, overrides={"data_dir": data})
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _run(path: Path | str, action: Callable[[Database], Awaitable[T]]) -> T:
    """`token_cmds._run` (the database's errors), with an identity's errors as exit status 2
    and a secret key that does not open the database as 1, each one line."""
    async def checked(db: Database) -> T:
        try:
            return await action(db)
        except IdentityError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except StartupError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None

    return run_on_database(path, checked)


def _identity(role: Role, store: str, name: str) -> Identity:
    try:
        return Identity(role, name, store)
    except IdentityError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _print_credentials(credentials: Credentials, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"username": credentials.username, "password": credentials.password}))
        return
    typer.echo(f"username {credentials.username}")
    typer.echo(f"password {credentials.password}")
    typer.echo("(the password is shown this once: the server keeps only its hash)", err=True)


def _broker_hint(settings: Settings) -> str:
    if settings.broker_url is not None:
        return f"broker: {settings.broker_url} (broker_url)"
    port = str(settings.mqtt_port) if settings.mqtt_port else "PORT"
    where = "" if settings.mqtt_port else " (esl serve prints PORT at start; fix it with mqtt_port)"
    return f"broker: the embedded broker of esl serve, mqtt://127.0.0.1:{port}{where}"


# -- esl gateways ----------------------------------------------------------------------------------
@gateways_app.callback()
def gateways(ctx: typer.Context, as_json: JsonOpt = False, server: ServerOpt = None, token: TokenOpt = None,
             store: StoreOpt = None) -> None:
    """Gateways: online or not, when last heard, how many labels each serves."""
    if ctx.invoked_subcommand is None:
        from eslserver.cli.tech_cmds import gateways as list_gateways
        list_gateways(as_json, server, token, store)


def _split_gateway(spec: str) -> tuple[str, str]:
    store, sep, gateway = spec.partition("/")
    if not sep or not store or not gateway:
        typer.echo(f"error: STORE/ID: expected the store and the gateway id, e.g. demo/gw1, got {spec!r}", err=True)
        raise typer.Exit(2)
    return store, gateway


@gateways_app.command("add")
def gateways_add(
    spec: Annotated[str, typer.Argument(metavar="STORE/ID",
                                        help="The store and the gateway's id in it, e.g. demo/gw1.")],
    key: Annotated[str | None, typer.Option(
        "--key", metavar="KEY", help="The gateway's public key, as `esl gateway --show-key` prints it: "
                                     "registered too, so jobs go to it (else: esl trust gateway later).")] = None,
    reset: ResetOpt = False,
    as_json: PrintJson = False,
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Register a gateway: make its MQTT identity and print its user name and password (once);
    with --key, register its public key as well (one step for the operator)."""
    from eslserver.signing import SigningKeyError, load_signing_key
    from eslserver.trust import TrustSetupError, register_gateway_key
    from firmware_proto.trust import TrustError, key_from_hex

    store, gateway = _split_gateway(spec)
    identity = _identity(Role.GATEWAY, store, gateway)
    settings = _settings(data, config)
    try:
        raw = None if key is None else key_from_hex(key, "--key")
        server_key = load_signing_key(settings).public.hex()
    except (TrustError, SigningKeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    path = _database_path(data, config)

    async def add(db: Database) -> Credentials:
        credentials = await add_identity(db, identity, _local_actor(), reset=reset)
        if raw is not None:
            try:
                await register_gateway_key(db, store, gateway, raw, actor=_local_actor())
            except TrustSetupError as exc:
                raise IdentityError(str(exc)) from None
        return credentials

    credentials = _run(path, add)
    _print_credentials(credentials, as_json)
    typer.echo(_broker_hint(settings), err=True)
    if raw is None:
        typer.echo(f"its public key: esl trust gateway {store}/{gateway} \"$(esl gateway --show-key --store {store} "
                   f"--id {gateway})\" (jobs go to it only then)", err=True)
    typer.echo(f"run it: esl gateway --store {store} --id {gateway} --username {credentials.username} "
               f"--password PASSWORD --server-public-key {server_key} --broker URL --radio RADIO "
               "(or ESL_MQTT_PASSWORD)", err=True)


@gateways_app.command("revoke")
def gateways_revoke(
    spec: Annotated[str, typer.Argument(metavar="STORE/ID", help="The store and the gateway's id in it.")],
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke a gateway (stolen, retired): the broker refuses it at once and its jobs go to others."""
    store, gateway = _split_gateway(spec)
    _revoke(_identity(Role.GATEWAY, store, gateway).username, data, config)


# -- esl identities --------------------------------------------------------------------------------
@identities_app.command("add")
def identities_add(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The till's or integration's name, e.g. till-1, shop.")],
    role: Annotated[str, typer.Option("--role", help=f"One of: {', '.join(_CLIENT_ROLES)} (gateways: "
                                                     "esl gateways add).")],
    store: Annotated[str, typer.Option("--store", help="The store it works for (its topics' store level).")],
    reset: ResetOpt = False,
    as_json: PrintJson = False,
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Make the MQTT identity of a POS till or an integration; print its user name and password (once)."""
    if role not in _CLIENT_ROLES:
        typer.echo(f"error: --role: expected one of {', '.join(_CLIENT_ROLES)}, got {role!r}"
                   + (" (register gateways with esl gateways add STORE/ID)" if role == "gateway" else ""), err=True)
        raise typer.Exit(2)
    identity = _identity(Role(role), store, name)
    settings = _settings(data, config)
    path = _database_path(data, config)
    credentials = _run(path, lambda db: add_identity(db, identity, _local_actor(), reset=reset))
    _print_credentials(credentials, as_json)
    typer.echo(_broker_hint(settings), err=True)


@identities_app.command("list")
def identities_list(
    data: DataOpt = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array, for scripts.")] = False,
    active: Annotated[bool, typer.Option("--active", help="Leave revoked identities out.")] = False,
) -> None:
    """List MQTT identities (user names, roles, stores; never passwords)."""
    path = _database_path(data, config)
    infos: list[IdentityInfo] = _run(path, lambda db: list_identities(db, include_revoked=not active))
    if as_json:
        typer.echo(json.dumps([i.to_json() for i in infos], indent=2))
        return
    if not infos:
        typer.echo("no identities", err=True)
        return
    typer.echo(f"{'USERNAME':<40}  {'ROLE':<12}  {'CREATED':<20}  REVOKED")
    for i in infos:
        revoked = i.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if i.revoked_at else "-"
        typer.echo(f"{i.username:<40}  {i.role:<12}  {i.created_at.strftime('%Y-%m-%d %H:%M:%S'):<20}  {revoked}")


@identities_app.command("revoke")
def identities_revoke(
    username: Annotated[str, typer.Argument(metavar="USERNAME", help="e.g. pos/demo/till-1 or gateway/demo/gw1.")],
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Revoke an identity: the broker refuses it from now on (a gateway's jobs go to others)."""
    _revoke(username, data, config)


def _revoke(username: str, data: Path | None, config: Path | None) -> None:
    path = _database_path(data, config)
    info = _run(path, lambda db: revoke_identity(db, username, _local_actor()))
    assert info.revoked_at is not None
    extra = "; its jobs in flight went back to the queue" if info.role == Role.GATEWAY.value else ""
    typer.echo(f"revoked {info.username} at {info.revoked_at.isoformat()}{extra}", err=True)


# -- esl broker-config -----------------------------------------------------------------------------
def broker_config(
    out: Annotated[Path, typer.Option("--out", help="Directory to write passwd and acl into (made 0700).")],
    data: DataOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Write Mosquitto's password and ACL files for every active identity (the server's too)."""
    settings = _settings(data, config)
    path = _database_path(data, config)

    async def build(db: Database) -> tuple[str, str, int]:
        from eslserver.keyvault import KeyVault
        vault = KeyVault(settings)
        await vault.load(db)
        await ensure_server_identity(db, settings.instance, server_password(vault, settings.instance))
        snapshot = await load_snapshot(db, settings.topic_prefix)
        header = (f"Mosquitto {{}} for eslserver, written by 'esl broker-config' at {iso(utcnow())} from "
                  f"{settings.database_path.resolve()}: {len(snapshot)} identities.\n"
                  "Do not edit: run esl broker-config again after every change of identities, then reload "
                  "Mosquitto (SIGHUP).")
        return (snapshot.password_file(header.format("password_file")), snapshot.acl_file(header.format("acl_file")),
                len(snapshot))

    passwd, acl, count = _run(path, build)
    try:
        private_dir(out)
        write_private(out / "passwd", passwd)
        write_private(out / "acl", acl)
    except OSError as exc:
        typer.echo(f"error: --out {out}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
    where = out.resolve()
    typer.echo(f"wrote {where / 'passwd'} and {where / 'acl'} ({count} identities, mode 0600)", err=True)
    typer.echo("in mosquitto.conf:")
    typer.echo("  allow_anonymous false")
    typer.echo(f"  password_file {where / 'passwd'}")
    typer.echo(f"  acl_file {where / 'acl'}")
    typer.echo(f"the server connects as server/{settings.instance} with a password derived from its secret key: "
               "leave mqtt_username unset. Reload Mosquitto (kill -HUP, systemctl reload mosquitto) after each run.",
               err=True)


def register(app: typer.Typer) -> None:
    """Attach ``esl gateways``, ``esl identities`` and ``esl broker-config`` to the `esl` app."""
    app.add_typer(gateways_app, name="gateways")
    app.add_typer(identities_app, name="identities")
    app.command("broker-config")(broker_config)
