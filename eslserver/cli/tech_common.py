"""What every technician command shares: where the server is, the token, and output.

Connection, first found wins:

* server: ``--server URL``, then ``ESL_SERVER``, then ``server`` in the config file, then
  ``http://127.0.0.1:8080``;
* token: ``--token``, then ``ESL_TOKEN``, then ``token`` in the config file.

The config file is TOML, ``$ESL_CLI_CONFIG`` if set, else ``$XDG_CONFIG_HOME/eslserver/cli.toml``
(``~/.config/eslserver/cli.toml``)::

    server = "http://store-17.local:8080"
    token = "esl_0123456789ab_…"

Output: on a terminal, aligned tables with a bold header and coloured states; piped, the same
rows as tab-separated text with a header line (``cut -f1`` gives the first column), no colour.
``--json`` prints the API's JSON as it is. ``NO_COLOR`` turns colour off on a terminal too.
Errors go to stderr as ``error: …`` and exit 1 (2 for bad usage or configuration).
"""

from __future__ import annotations

import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Final, Optional

import typer

from eslserver.client import DEFAULT_SERVER, ApiError, Client, ClientError

__all__ = [
    "ServerOpt", "StoreOpt", "TokenOpt", "JsonOpt", "Connection", "resolve_connection", "config_path", "connect", "fail",
    "Column", "print_table", "print_json", "colour_state", "is_terminal", "api_errors", "BEL",
]

BEL: Final = "\a"

ServerOpt = Annotated[Optional[str], typer.Option(
    "--server", metavar="URL", help=f"API server (default: $ESL_SERVER, server in ~/.config/eslserver/cli.toml, "
                                    f"or {DEFAULT_SERVER}).",
    show_default=False)]
TokenOpt = Annotated[Optional[str], typer.Option(
    "--token", metavar="TOKEN", help="API token, role tech (default: $ESL_TOKEN, or token in "
                                     "~/.config/eslserver/cli.toml; $ESL_CLI_CONFIG names another file).",
    show_default=False)]
StoreOpt = Annotated[Optional[str], typer.Option(
    "--store", metavar="STORE", help="A store of the chain (default: store in ~/.config/eslserver/cli.toml, or the "
                                     "server's own store).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (the API's own) instead of a table.")]


@dataclass(frozen=True, slots=True)
class Connection:
    """Where to send requests, with which token, and where each came from (for messages)."""

    server: str
    token: str | None = field(repr=False)  # a token stays out of reprs (logs, tracebacks)
    server_from: str
    token_from: str | None


def config_path(environ: Mapping[str, str]) -> Path:
    """The CLI config file: ``$ESL_CLI_CONFIG``, else ``$XDG_CONFIG_HOME/eslserver/cli.toml``."""
    explicit = environ.get("ESL_CLI_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "eslserver" / "cli.toml"


def _read_config(path: Path) -> dict[str, str]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read as TOML: {exc}") from None
    out: dict[str, str] = {}
    for key, value in data.items():
        if key not in ("server", "token", "store"):
            raise ValueError(f"{path}: unknown key {key!r} (expected server, token, store)")
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{path}: {key}: expected text, got {value!r}")
        out[key] = value.strip()
    return out


def resolve_connection(server: str | None, token: str | None, environ: Mapping[str, str]) -> Connection:
    """Flags, then the environment, then the config file (see the module docstring)."""
    path = config_path(environ)
    config = _read_config(path)
    if server:
        server_value, server_from = server, "--server"
    elif environ.get("ESL_SERVER"):
        server_value, server_from = environ["ESL_SERVER"], "ESL_SERVER"
    elif "server" in config:
        server_value, server_from = config["server"], str(path)
    else:
        server_value, server_from = DEFAULT_SERVER, "default"
    token_value: str | None
    if token:
        token_value, token_from = token, "--token"
    elif environ.get("ESL_TOKEN"):
        token_value, token_from = environ["ESL_TOKEN"].strip(), "ESL_TOKEN"
    elif "token" in config:
        token_value, token_from = config["token"], str(path)
    else:
        token_value, token_from = None, None
    return Connection(server_value, token_value, server_from, token_from)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; the caller raises the returned `typer.Exit`."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def connect(server: str | None, token: str | None, store: str | None = None) -> Client:
    """A client for the resolved connection (for `store` of the chain, or the config file's
    ``store``, or the server's own), or exit 2 with the reason."""
    try:
        conn = resolve_connection(server, token, os.environ)
        if store is None:
            store = _read_config(config_path(os.environ)).get("store")
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    if conn.token is None:
        raise fail("no token: pass --token, set ESL_TOKEN, or put token = \"esl_…\" in "
                   f"{config_path(os.environ)} (create one with 'esl tokens create --role tech')", 2)
    try:
        return Client(conn.server, conn.token, store=store)
    except ClientError as exc:
        raise fail(f"{exc} (from {conn.server_from})", 2) from None


def describe(exc: ClientError) -> str:
    """One line for the user: the API's detail, with a hint for the usual causes."""
    if isinstance(exc, ApiError):
        hint = ""
        if exc.status == 401:
            hint = " — check --token / ESL_TOKEN"
        elif exc.status == 403:
            hint = " — this needs a token with role tech"
        return f"{exc.detail}{hint}"
    return str(exc)


@contextmanager
def api_errors() -> Iterator[None]:
    """Turn a client error escaping a command into ``error: …`` and exit status 1."""
    try:
        yield
    except ClientError as exc:
        raise fail(describe(exc)) from None


# --- output ---------------------------------------------------------------------------------------

def is_terminal() -> bool:
    return sys.stdout.isatty()


def _colour_ok() -> bool:
    return is_terminal() and "NO_COLOR" not in os.environ


_STATE_COLOURS: Final = {"ok": "green", "pending": "yellow", "failed": "red", "offline": "red",
                         "unpaired": "blue", "online": "green"}


def colour_state(text: str) -> str:
    colour = _STATE_COLOURS.get(text)
    if colour is None or not _colour_ok():
        return text
    return typer.style(text, fg=colour, bold=True if text in ("failed", "offline") else None)


@dataclass(frozen=True, slots=True)
class Column:
    """A table column: its header and how to get the cell text from an item."""

    header: str
    cell: Callable[[Mapping[str, Any]], object]
    colour: bool = False


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def print_table(columns: Sequence[Column], items: Iterable[Mapping[str, Any]], *, empty: str = "") -> int:
    """Print `items` as a table (terminal) or tab-separated text (piped); how many rows."""
    rows = [[_text(c.cell(item)) for c in columns] for item in items]
    if not rows:
        if empty:
            typer.echo(empty, err=True)
        return 0
    headers = [c.header for c in columns]
    if not is_terminal():
        typer.echo("\t".join(headers))
        for row in rows:
            typer.echo("\t".join(cell.replace("\t", " ").replace("\n", " ") for cell in row))
        return len(rows)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    head = "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()
    typer.echo(typer.style(head, bold=True) if _colour_ok() else head)
    for row in rows:
        cells = []
        for i, (cell, width) in enumerate(zip(row, widths)):
            padded = cell.ljust(width)
            if columns[i].colour:
                padded = colour_state(cell) + " " * (width - len(cell))
            cells.append(padded)
        typer.echo("  ".join(cells).rstrip())
    return len(rows)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)  # the API's money is text; a JSON number stays a number
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def print_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, ensure_ascii=False, default=_json_default))
