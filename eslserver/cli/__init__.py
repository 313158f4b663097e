"""The `esl` command line.

Each group of commands lives in its own module with a ``register(app)`` function, so that
rendering, simulation and (later) server commands grow independently.
"""

from __future__ import annotations

import typer

from eslserver.cli import render_cmds, serve_cmds, simulate_cmds

__all__ = ["app", "main"]

app = typer.Typer(
    name="esl",
    help="eslserver: electronic shelf labels — render, simulate, serve.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

render_cmds.register(app)
simulate_cmds.register(app)
serve_cmds.register(app)
from eslserver.cli import token_cmds  # noqa: E402
token_cmds.register(app)
from eslserver.cli import gateway_cmds  # noqa: E402
gateway_cmds.register(app)
from eslserver.cli import tech_cmds  # noqa: E402
tech_cmds.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
