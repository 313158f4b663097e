"""Gateways, jobs, the audit log, the dashboard summary, metrics, health, the OpenAPI document."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any, Final

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from eslserver.api.routes_labels import json_column
from eslserver.api.routing import (
    ANY_ROLE, PUBLIC, Call, Route, json_response, newest_first, normalise_mac, page_params, query_choice, query_int,
    query_text,
)
from eslserver.metrics import JOB_STATES, LABEL_STATES
from eslserver.timeutil import iso, parse_iso, utcnow

__all__ = ["ROUTES", "ADMIN_ONLY"]

log = logging.getLogger(__name__)

ADMIN_ONLY: Final = frozenset({"admin"})
_JOB_KINDS: Final = ("pair", "image", "command")
_JOB_COLUMNS: Final = ("id, mac, gateway, kind, state, image_hash, base_hash, region, delta, format, attempts, "
                       "next_attempt_at, created_at, sent_at, finished_at, origin_at, error")
_HEALTH_TIMEOUT_S: Final = 2.0


async def list_gateways(call: Call) -> web.StreamResponse:
    rows = await call.server.db.read(
        "SELECT g.id, g.status, g.last_seen, g.info, "
        "(SELECT COUNT(*) FROM labels l WHERE l.store = g.store AND l.gateway = g.id) AS n_labels "
        "FROM gateways g WHERE g.store = ? ORDER BY g.id", (call.server.settings.store,))
    items = [{"id": r["id"], "status": r["status"], "last_seen": r["last_seen"], "labels": r["n_labels"],
              "info": json_column(r["info"]) or {}} for r in rows]
    return json_response({"items": items})


def _job_json(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["delta"] = bool(out["delta"])
    return out


async def list_jobs(call: Call) -> web.StreamResponse:
    request = call.request
    where = ["store = ?"]
    params: list[Any] = [call.server.settings.store]
    state = query_choice(request, "state", JOB_STATES)
    if state is not None:
        where.append("state = ?")
        params.append(state)
    kind = query_choice(request, "kind", _JOB_KINDS)
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    gateway = query_text(request, "gateway")
    if gateway is not None:
        where.append("gateway = ?")
        params.append(gateway)
    mac = query_text(request, "mac")
    if mac is not None:
        where.append("mac = ?")
        params.append(normalise_mac(mac))
    limit, offset = page_params(request, default=100, maximum=1000)
    clause = " AND ".join(where)
    db = call.server.db
    total = await db.read_one(f"SELECT COUNT(*) FROM jobs WHERE {clause}", params)
    rows = await db.read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                         [*params, limit, offset])
    return json_response({"items": [_job_json(r) for r in rows], "total": total[0] if total else 0,
                          "limit": limit, "offset": offset})


AUDIT_SELECT: Final = "SELECT id, at, actor, role, action, target, before, after FROM audit"


def audit_item(row: Any) -> dict[str, Any]:
    """One audit row as the API shows it (before/after decoded)."""
    return {"id": row["id"], "at": row["at"], "actor": row["actor"], "role": row["role"], "action": row["action"],
            "target": row["target"], "before": json_column(row["before"]), "after": json_column(row["after"])}


async def list_audit(call: Call) -> web.StreamResponse:
    where: list[str] = []
    params: list[Any] = []
    for name in ("actor", "action", "target"):
        value = query_text(call.request, name)
        if value is not None:
            where.append(f"{name} = ?")
            params.append(value)
    return await newest_first(call, AUDIT_SELECT, where, params, audit_item)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    k = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[k]


async def summary(call: Call) -> web.StreamResponse:
    """The dashboard numbers in one read: labels by state, low batteries, gateways, jobs,
    price updates and time-to-shelf over the last hour."""
    server = call.server
    store = server.settings.store
    low = query_int(call.request, "battery_below", default=2400, lo=0, hi=100_000)
    db = server.db
    labels = {s: 0 for s in LABEL_STATES}
    for r in await db.read("SELECT state, COUNT(*) FROM labels WHERE store = ? GROUP BY state", (store,)):
        labels[r[0]] = r[1]
    low_row = await db.read_one("SELECT COUNT(*) FROM labels WHERE store = ? AND battery_mv < ?", (store, low))
    up_row = await db.read_one("SELECT COUNT(*) FROM labels WHERE store = ? AND expected_hash IS NOT NULL "
                               "AND displayed_hash = expected_hash", (store,))
    gateways = {"online": 0, "offline": 0}
    for r in await db.read("SELECT status, COUNT(*) FROM gateways WHERE store = ? GROUP BY status", (store,)):
        gateways[str(r[0])] = r[1]
    jobs = {s: 0 for s in JOB_STATES}
    for r in await db.read("SELECT state, COUNT(*) FROM jobs WHERE store = ? AND state IN ('queued', 'sent') "
                           "GROUP BY state", (store,)):
        jobs[r[0]] = r[1]
    now = utcnow()
    since = iso(now - timedelta(hours=1))
    updates = await db.read_one("SELECT COUNT(*) FROM audit WHERE action = 'price.update' AND at >= ?", (since,))
    done = await db.read("SELECT origin_at, finished_at FROM jobs WHERE store = ? AND kind = 'image' "
                         "AND state = 'done' AND finished_at >= ? AND origin_at IS NOT NULL", (store, since))
    waits = sorted(max(0.0, (parse_iso(r["finished_at"]) - parse_iso(r["origin_at"])).total_seconds()) for r in done)
    return json_response({
        "at": iso(now), "labels": labels, "labels_up_to_date": up_row[0] if up_row else 0,
        "labels_low_battery": low_row[0] if low_row else 0, "battery_below": low,
        "gateways": gateways, "open_jobs": {"queued": jobs["queued"], "sent": jobs["sent"]},
        "updates_last_hour": updates[0] if updates else 0,
        "time_to_shelf_s": {"count": len(waits), "p50": _percentile(waits, 0.5), "p99": _percentile(waits, 0.99)},
    })


async def whoami(call: Call) -> web.StreamResponse:
    """Who the token stands for: a client (the web UI's sign-in, the CLI) checks a token with it
    and shows only what the role may do."""
    who = call.who
    return json_response({"name": who.name, "role": who.role})


async def metrics(call: Call) -> web.StreamResponse:
    body = generate_latest(call.server.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _database_ok(call: Call) -> str:
    try:
        await asyncio.wait_for(call.server.db.read_one("SELECT COUNT(*) FROM stores"), _HEALTH_TIMEOUT_S)
    except (TimeoutError, OSError) as exc:
        return f"error: {exc or type(exc).__name__}"
    except Exception as exc:  # the health check reports any database failure, it must not raise
        log.warning("health check: database: %s", exc)
        return f"error: {exc}"
    return "ok"


def _mqtt_state(call: Call) -> str:
    server = call.server
    if not server.use_mqtt:
        return "disabled"
    return "connected" if server.mqtt is not None and server.mqtt.is_connected else "disconnected"


async def healthz(call: Call) -> web.StreamResponse:
    """``ok`` when the database answers and the broker is connected, else ``degraded``; the
    status code is 503 only when the database fails (a broker outage does not make the HTTP
    API useless, and a load balancer should not pull a server for it)."""
    database = await _database_ok(call)
    mqtt = _mqtt_state(call)
    healthy = database == "ok" and mqtt in ("connected", "disabled")
    return json_response({"status": "ok" if healthy else "degraded", "database": database, "mqtt": mqtt},
                         status=200 if database == "ok" else 503)


async def openapi(call: Call) -> web.StreamResponse:
    from eslserver.api.openapi import document
    return json_response(document())


ROUTES: Final = (
    Route("GET", "/api/v1/gateways", list_gateways, ANY_ROLE),
    Route("GET", "/api/v1/jobs", list_jobs, ANY_ROLE),
    Route("GET", "/api/v1/audit", list_audit, ADMIN_ONLY),
    Route("GET", "/api/v1/summary", summary, ANY_ROLE),
    Route("GET", "/api/v1/me", whoami, ANY_ROLE),
    Route("GET", "/metrics", metrics, PUBLIC),
    Route("GET", "/healthz", healthz, PUBLIC),
    Route("GET", "/api/v1/openapi.json", openapi, PUBLIC),
)
