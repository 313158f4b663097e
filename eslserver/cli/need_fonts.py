"""The fonts check of commands that draw labels (`esl serve`, `esl demo`, `esl render`, …).

Without DejaVu Sans every label fails one by one, deep in a render worker, with a traceback a
second; checking before anything starts turns that into one line saying what to install.
"""

from __future__ import annotations

import typer

__all__ = ["require_fonts_or_exit"]


def require_fonts_or_exit(command: str) -> None:
    """Return if the label fonts are found; else print ``esl COMMAND: <what to install>`` on
    stderr and exit 1."""
    from render.fonts import FontNotFoundError, require_fonts

    try:
        require_fonts()
    except FontNotFoundError as exc:
        typer.echo(f"esl {command}: {exc}", err=True)
        raise typer.Exit(1) from None
