"""How `esl` ends when something goes wrong that is not a bug: one line, a non-zero status.

* `startup_errors`: a `StartupError` of the server (a busy HTTP port, a data directory that
  cannot be used) becomes ``esl serve: HTTP port 8080 on 127.0.0.1 is already in use (…);
  change it with --http-port, http_port in esl.toml or ESL_HTTP_PORT`` and status 1, where a
  60-line traceback used to end in ``OSError: [Errno 98]``.
* `run_app`: the console script; output piped into a reader that stops early
  (``esl labels | head``) ends quietly with status 1 instead of a ``BrokenPipeError``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final

import typer

from eslserver.config import ENV_PREFIX
from eslserver.startup import StartupError

__all__ = ["startup_errors", "how_to_change", "run_app"]

_FLAGS: Final = {"http_port": "--http-port", "http_host": "--http-host", "data_dir": "--data",
                 "broker_url": "--broker", "mqtt_port": "--broker-port", "store": "--store",
                 "gateway_id": "--id", "radio": "--radio", "http_tls_cert": "--tls-cert",
                 "http_tls_key": "--tls-key", "database_url": "--database", "instance": "--instance"}
"""The `esl serve` / `esl demo` (or, for the last two, `esl gateway`) flag of each setting a
start-up error can name."""


def how_to_change(setting: str) -> str:
    """``change it with --http-port, http_port in esl.toml or ESL_HTTP_PORT``: every place the
    setting comes from (the configuration's order: file < environment < flag)."""
    places = [f"{setting} in esl.toml", f"{ENV_PREFIX}{setting.upper()}"]
    if setting in _FLAGS:
        places.insert(0, _FLAGS[setting])
    return f"change it with {', '.join(places[:-1])} or {places[-1]}"


@contextmanager
def startup_errors(command: str) -> Iterator[None]:
    """Around a command that starts the server: its `StartupError` as one line, status 1."""
    try:
        yield
    except StartupError as exc:
        typer.echo(f"esl {command}: {exc}; {exc.fix or how_to_change(exc.setting)}", err=True)
        raise typer.Exit(1) from None


def run_app(app: Callable[[], object]) -> None:
    """Run the typer `app`; a reader that closed our stdout ends the command quietly."""
    try:
        try:
            app()
        finally:
            sys.stdout.flush()  # now, not at interpreter exit, where it would print a traceback
    except BrokenPipeError:
        # nothing more can be written there; point stdout at /dev/null so that the final
        # flush at exit finds nowhere to fail
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        sys.exit(1)
