"""What the store's modules share: one ``column = ?`` clause per filter given (the label and
job listings), and the bound of a batch (`batch_limit`, the retention prunes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["batch_limit", "equal_to"]


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


def batch_limit(limit: object) -> int:
    """`limit` if it is an integer >= 1 (how many rows one batch may delete), else ValueError:
    a ``LIMIT 0`` or a negative one (no limit at all in SQLite) would break the promise of
    small batches."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit: expected an integer >= 1, got {limit!r}")
    return limit
