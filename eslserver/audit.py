"""The audit log: who changed what, with the state before and after, in the same transaction."""

from __future__ import annotations

import json
from typing import Any, Protocol

import aiosqlite

from eslserver.store import audit as store_audit
from eslserver.timeutil import iso, utcnow

__all__ = ["Who", "json_default", "record_audit"]


class Who(Protocol):
    """Anyone who writes (`eslserver.auth.Actor`, or the server itself)."""

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...


def json_default(value: Any) -> Any:
    """JSON for what our records hold besides JSON types: Decimal and datetime as text."""
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _dump(value: object) -> str | None:
    return None if value is None else json.dumps(value, default=json_default, ensure_ascii=False, sort_keys=True)


async def record_audit(conn: aiosqlite.Connection, who: Who, action: str, target: str,
                       before: object = None, after: object = None) -> None:
    """Write one audit row inside the caller's transaction (so it commits with the change)."""
    await store_audit.insert(conn, iso(utcnow()), who.name, who.role, action, target, _dump(before), _dump(after))
