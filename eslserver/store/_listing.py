"""What the label and job listings share: one ``column = ?`` clause per filter given."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["equal_to"]


def equal_to(values: Mapping[str, Any]) -> tuple[list[str], list[Any]]:
    """``column = ?`` clauses and their parameters for every value that is not None. The
    column names come from the caller's code, never from a request."""
    clauses: list[str] = []
    params: list[Any] = []
    for name, value in values.items():
        if value is not None:
            clauses.append(f"{name} = ?")
            params.append(value)
    return clauses, params

