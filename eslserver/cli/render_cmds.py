"""`esl render`, `esl templates list|check` and `esl demo` (renders the sample catalogue)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the rendering commands to the `esl` app."""
