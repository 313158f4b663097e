"""``esl stores add | list``: the stores of a chain, served by one server (or several instances).

Like ``esl tokens``, these work on the server's database (``--data``, or ``database_url``)
beside the running server, which serves a store added here within seconds.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from eslserver.auth import Actor
from eslserver.cli.token_cmds import ConfigOpt, DataOpt, _database_path, _run
from eslserver.config import ConfigError, load_settings

__all__ = ["register", "stores_app"]

stores_app = typer.Typer(help="The stores this server serves (a chain on one system): add, list.",
                         no_args_is_help=True)
_CLI = Actor("cli", "admin")


def add(store: Annotated[str, typer.Argument(help="Store id: its MQTT topics are esl/{store}/….")],
        name: Annotated[str, typer.Option("--name", help="The store's name (on the labels).")],
        currency: Annotated[str, typer.Option("--currency", help="ISO 4217 code, e.g. PLN, EUR.")],
        field_map: Annotated[Optional[str], typer.Option(
            "--field-map", help='The POS\'s own field names, JSON: {"Product_ID": "sku", "Cena": "price"}.')] = None,
        language: Annotated[Optional[str], typer.Option("--language", help="ISO 639-1, e.g. pl, fr (default: "
                                                                           "the configured store's).")] = None,
        country: Annotated[Optional[str], typer.Option("--country", help="ISO 3166, e.g. PL, FR (default: the "
                                                                         "configured store's).")] = None,
        timezone: Annotated[Optional[str], typer.Option("--timezone", help="IANA time zone, e.g. Europe/Paris "
                                                                           "(default: the configured store's).")] = None,
        data: DataOpt = None, config: ConfigOpt = None) -> None:
    """Add a store (or change its name, currency and field map); audited."""
    from eslserver.stores_admin import StoreError, add_store  # the server's parts: not in a gateway install
    try:
        settings = load_settings(config, overrides={"data_dir": data})
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        mapping = json.loads(field_map) if field_map is not None else {}
    except ValueError as exc:
        typer.echo(f"error: --field-map: expected a JSON object, got {field_map!r:.60} ({exc})", err=True)
        raise typer.Exit(2) from None
    if not isinstance(mapping, dict):
        typer.echo(f"error: --field-map: expected a JSON object, got {field_map!r:.60}", err=True)
        raise typer.Exit(2)
    path = _database_path(data, config)

    async def action(db):  # type: ignore[no-untyped-def]
        try:
            return await add_store(db, settings, store, name=name, currency=currency, field_map=mapping,
                                   language=language, country=country, timezone=timezone, actor=_CLI)
        except StoreError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    added = _run(path, action)
    typer.echo(f"store {added['id']} ({added['name']}, {added['currency']}, {added['language']}-{added['country']}, "
               f"{added['timezone']}): served within seconds by the "
               f"running server; its POS publishes on esl/{added['id']}/pos/prices", err=True)


def list_(as_json: Annotated[bool, typer.Option("--json", help="One JSON list.")] = False,
          data: DataOpt = None, config: ConfigOpt = None) -> None:
    """List the stores."""
    from eslserver.stores_admin import list_stores
    found = _run(_database_path(data, config), list_stores)
    if as_json:
        typer.echo(json.dumps(found))
        return
    for s in found:
        typer.echo(f"{s['id']:<16} {s['currency']:<4} {s['language']}-{s['country']:<3} {s['timezone']:<20} {s['name']}")


def register(app: typer.Typer) -> None:
    """Attach ``esl stores …`` to the `esl` app."""
    stores_app.command("add")(add)
    stores_app.command("list")(list_)
    app.add_typer(stores_app, name="stores")
