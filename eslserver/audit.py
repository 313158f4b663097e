"""The audit log: who changed what, with the state before and after, in the same transaction.

A change of a record is audited as what changed (`changed`): the old and new values of the
keys that differ, not both whole records, so an unchanged blob of attributes costs nothing
each time a price moves."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from eslserver.db.database import Connection
from eslserver.store import audit as store_audit
from eslserver.timeutil import iso, utcnow

__all__ = ["Who", "changed", "json_default", "record_audit"]


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


def changed(before: Mapping[str, Any] | None,
            after: Mapping[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """``(old, new)``: the values in `before` and `after` of the keys whose value differs (null
    on the side that lacks the key); ``attributes`` compared name by name (only the names that
    changed, under ``attributes``). A new record (`before` None) is ``(None, after)``."""
    if before is None:
        return None, dict(after)
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    for key in dict.fromkeys([*before, *after]):
        was, now = before.get(key), after.get(key)
        if was == now:
            continue
        if key == "attributes" and isinstance(was, Mapping) and isinstance(now, Mapping):
            was, now = changed(was, now)
        old[key], new[key] = was, now
    return old, new


def _dump(value: object) -> str | None:
    return None if value is None else json.dumps(value, default=json_default, ensure_ascii=False, sort_keys=True)


async def record_audit(conn: Connection, who: Who, action: str, target: str,
                       before: object = None, after: object = None) -> None:
    """Write one audit row inside the caller's transaction (so it commits with the change)."""
    await store_audit.insert(conn, iso(utcnow()), who.name, who.role, action, target, _dump(before), _dump(after))
