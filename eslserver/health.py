"""The server's health: ``ok``, or ``degraded`` with the reasons, fed by what sees the faults.

A load balancer, Kubernetes and an operator all need to know when the server cannot do its
work, and an HTTP 500 on one request does not tell them: so the database reports the write
transactions that fail for a reason of the machine (disk full, read-only, corrupt, I/O), the
housekeeping loop reports the periodic ``quick_check`` and the MQTT connection state, and
`/healthz` and the ``esl_health{component=…}`` gauges show the sum. Each change is logged
once (a fault as a warning, its end as "recovered"), never once per failing request.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import datetime
from typing import Final

from prometheus_client import Gauge

from eslserver.timeutil import iso

__all__ = ["COMPONENTS", "Health", "database_fault"]

log = logging.getLogger(__name__)

COMPONENTS: Final = ("database", "database_integrity", "broker")
"""What `Health` tracks: ``database`` (writes and reads failing for a reason of the machine),
``database_integrity`` (``quick_check``, or corruption met while reading or writing) and
``broker`` (the MQTT connection)."""

_FAULTS: Final = {sqlite3.SQLITE_FULL: "disk full", sqlite3.SQLITE_READONLY: "read-only",
                  sqlite3.SQLITE_IOERR: "I/O error", sqlite3.SQLITE_CANTOPEN: "cannot open the file",
                  sqlite3.SQLITE_CORRUPT: "corrupt", sqlite3.SQLITE_NOTADB: "corrupt"}
"""SQLite's primary result codes that mean the machine or the file is at fault, not the request."""
_DISK_FULL: Final = "database: disk full"


_PG_FAULTS: Final = {"53": "out of resources", "53100": "disk full", "25006": "read-only", "08": "connection lost",
                     "57P": "server shutting down", "58": "I/O error", "XX001": "corrupt", "XX002": "corrupt"}
"""PostgreSQL SQLSTATEs (whole codes, or their leading class) that mean the server or its disk is
at fault, not the request."""


def _pg_fault(exc: BaseException) -> str | None:
    """What a PostgreSQL driver error says of the database server (None: the request's fault)."""
    module = type(exc).__module__
    if not module.startswith("asyncpg"):
        return "unreachable" if isinstance(exc, OSError) else None
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str):
        return _PG_FAULTS.get(state) or _PG_FAULTS.get(state[:3]) or _PG_FAULTS.get(state[:2])
    if _is_internal_client_error(exc):
        # "cannot switch to state …; another operation (2) is in progress": the server ended the
        # connection (its "terminating connection" came while no statement ran) and the next
        # statement found the protocol out of step with it
        return "connection lost"
    return "connection lost" if "connection" in type(exc).__name__.lower() else None


def _is_internal_client_error(exc: BaseException) -> bool:
    """asyncpg's `InternalClientError` (a connection whose protocol state is broken), except
    `OutdatedSchemaCacheError` (a statement prepared before a schema change: retried, no fault)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return "InternalClientError" in names and "OutdatedSchemaCacheError" not in names


def database_fault(exc: BaseException) -> tuple[str, str] | None:
    """(component, reason) of a database error that is the machine's or the file's fault
    (``("database", "database: disk full")``), or None for an error of the request itself
    (a constraint, a programming error), which says nothing about health."""
    if not isinstance(exc, sqlite3.Error):
        kind = _pg_fault(exc)
        if kind is None:
            return None
        if kind == "corrupt":
            return "database_integrity", f"database: corrupt ({exc})"
        return "database", f"database: {kind} ({exc})"
    code = getattr(exc, "sqlite_errorcode", None)
    kind = _FAULTS.get(code & 0xFF) if isinstance(code, int) else None
    if kind is None and "Could not decode to UTF-8" in str(exc):
        kind = "corrupt"  # eslserver writes only valid text: bytes that are not UTF-8 are damage
    if kind is None:
        return None
    if kind == "corrupt":
        return "database_integrity", f"database: corrupt ({exc})"
    return "database", f"database: {kind} ({exc})"


class Health:
    """Faults by component; the gauges of `gauge` (``esl_health``) follow them: 1 ok, 0 not."""

    def __init__(self, gauge: Gauge | None = None) -> None:
        self._faults: dict[str, str] = {}
        self._sticky: set[str] = set()
        self._gauge = gauge
        for component in COMPONENTS:
            self._show(component)

    def fault(self, component: str, reason: str, *, sticky: bool = False) -> None:
        """`component` is degraded for `reason`; a `sticky` fault (corruption met in use) stays
        until the process restarts, whatever clears it otherwise."""
        self._check(component)
        if self._faults.get(component) != reason and component not in self._sticky:
            log.warning("health: %s", reason)
            self._faults[component] = reason
        if sticky:
            self._sticky.add(component)
        self._show(component)

    def clear(self, component: str) -> None:
        """`component` works again (a commit went through, a quick_check passed, the broker
        is back): logged once if it had been degraded; a sticky fault stays."""
        self._check(component)
        if component in self._sticky or component not in self._faults:
            return
        log.warning("health: %s recovered (was: %s)", component, self._faults.pop(component))
        self._show(component)

    def broker_down(self, since: datetime) -> None:
        self.fault("broker", f"broker: disconnected since {iso(since)}")

    def reason(self, component: str) -> str | None:
        return self._faults.get(component)

    @property
    def reasons(self) -> list[str]:
        """Every current fault, in `COMPONENTS` order; empty when healthy."""
        return [self._faults[c] for c in COMPONENTS if c in self._faults]

    @property
    def is_disk_full(self) -> bool:
        return (self._faults.get("database") or "").startswith(_DISK_FULL)

    @property
    def database_ok(self) -> bool:
        return "database" not in self._faults and "database_integrity" not in self._faults

    def _show(self, component: str) -> None:
        if self._gauge is not None:
            self._gauge.labels(component).set(0 if component in self._faults else 1)

    @staticmethod
    def _check(component: str) -> None:
        if component not in COMPONENTS:
            raise ValueError(f"component: expected one of {', '.join(COMPONENTS)}, got {component!r}")
