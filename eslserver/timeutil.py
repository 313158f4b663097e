"""UTC instants and their one text form in the database (sortable ISO 8601, microseconds)."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["iso", "parse_iso", "utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(when: datetime) -> str:
    """``2026-11-23T17:06:27.000123+00:00``: one width, so text order is time order in SQL."""
    if when.tzinfo is None:
        raise ValueError(f"time must be timezone-aware, got {when!r}")
    return when.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(text: str) -> datetime:
    when = datetime.fromisoformat(text)
    if when.tzinfo is None:
        raise ValueError(f"time must carry a UTC offset, got {text!r}")
    return when.astimezone(UTC)
