"""The `esl` command line.

Each group of commands lives in its own module with a ``register(app)`` function, so that
rendering, simulation and (later) server commands grow independently.
"""

from __future__ import annotations

from typing import Annotated

import typer

from eslserver import __version__
from eslserver.cli import render_cmds, serve_cmds, simulate_cmds
from eslserver.cli.errors import run_app

__all__ = ["app", "main"]

app = typer.Typer(
    name="esl",
    help="eslserver: electronic shelf labels — render, simulate, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # plain help, as click writes it: typer's rich panels print "<bool>" beside every flag
    # (typer 0.29), as if --verbose took a value; errors stay one line instead of a box.
    # A wide terminal gets wider help, so that command summaries are not cut short.
    rich_markup_mode=None,
    context_settings={"max_content_width": 120},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"esl (eslserver) {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the installed version and exit.")] = False,
) -> None:
    """Options before any command (the group's help is the app's)."""

render_cmds.register(app)
simulate_cmds.register(app)
serve_cmds.register(app)
from eslserver.cli import token_cmds  # noqa: E402
token_cmds.register(app)
from eslserver.cli import gateway_cmds  # noqa: E402
gateway_cmds.register(app)
from eslserver.cli import tech_cmds  # noqa: E402
tech_cmds.register(app)
from eslserver.cli import admin_price_cmds  # noqa: E402
admin_price_cmds.register(app)
from eslserver.cli import backup_cmds  # noqa: E402
backup_cmds.register(app)
from eslserver.cli import identity_cmds  # noqa: E402
identity_cmds.register(app)
from eslserver.cli import trust_cmds  # noqa: E402
trust_cmds.register(app)
from eslserver.cli import db_cmds  # noqa: E402
db_cmds.register(app)
from eslserver.cli import store_cmds  # noqa: E402
store_cmds.register(app)


def main() -> None:
    """Console-script entry point (a closed stdout pipe ends it quietly: `errors.run_app`)."""
    run_app(app)
