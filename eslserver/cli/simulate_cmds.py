"""`esl simulate`: a simulated store radio that a gateway connects to."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Attach the simulator commands to the `esl` app."""
