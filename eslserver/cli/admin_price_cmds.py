"""The admin's price commands: ``esl import-history FILE`` and ``esl reset-seq SKU``.

Both repair what the POS feed deliberately refuses: a POS may not back-date a price (the
history is what the shelf showed), and a ``seq`` once stored only grows. An admin token is
needed, and the server audits each under the token's name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from eslserver.cli.tech_common import JsonOpt, ServerOpt, StoreOpt, TokenOpt, api_errors, connect, fail, print_json

__all__ = ["register"]


def import_history(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="JSON array of price updates, each with the past "
                                                              "valid_from at which it took effect.",
                                         exists=True, dir_okay=False, readable=True)],
    as_json: JsonOpt = False,
    server: ServerOpt = None,
    store: StoreOpt = None,
    token: TokenOpt = None,
) -> None:
    """Import historic prices (admin): recorded as of their valid_from, after what is recorded."""
    try:
        items: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"{path}: {exc}", 2) from None
    if not isinstance(items, list):
        raise fail(f"{path}: expected a JSON array of price updates, got {type(items).__name__}", 2)
    with connect(server, token, store) as client, api_errors():
        answer = client.import_history(items) if items else {"accepted": [], "errors": []}
    if as_json:
        print_json(answer)
    else:
        for error in answer["errors"]:
            typer.echo(f"error: {error['detail']}", err=True)
        typer.echo(f"{path}: {len(answer['accepted'])} historic prices recorded, {len(answer['errors'])} refused")
    if answer["errors"]:
        raise typer.Exit(1)


def reset_seq(
    sku: Annotated[str, typer.Argument(metavar="SKU", help="Product SKU.")],
    as_json: JsonOpt = False,
    server: ServerOpt = None,
    store: StoreOpt = None,
    token: TokenOpt = None,
) -> None:
    """Forget a SKU's POS seq (admin), after a forged or corrupt seq made genuine updates stale."""
    with connect(server, token, store) as client, api_errors():
        answer = client.reset_seq(sku)
    if as_json:
        print_json(answer)
    else:
        typer.echo(f"{answer['sku']}: seq {answer['previous_seq']} forgotten; the POS's next seq is accepted")


def register(app: typer.Typer) -> None:
    """Attach the admin's price commands to the `esl` app."""
    app.command("import-history")(import_history)
    app.command("reset-seq")(reset_seq)
