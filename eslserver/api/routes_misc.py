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
    ANY_ROLE, DOCUMENT_KEY, PUBLIC, Call, Route, json_response, newest_first, normalise_mac, page_params, query_choice,
    query_int, query_text,
)
from eslserver.metrics import JOB_STATES, LABEL_STATES
from eslserver.store import audit, stores
from eslserver.store import gateways as gateway_rows
from eslserver.store import jobs as job_rows
from eslserver.store import labels as label_rows
from eslserver.timeutil import iso, parse_iso, utcnow

__all__ = ["ROUTES", "ADMIN_ONLY"]

log = logging.getLogger(__name__)

ADMIN_ONLY: Final = frozenset({"admin"})
_JOB_KINDS: Final = ("pair", "image", "command")
_HEALTH_TIMEOUT_S: Final = 2.0


async def list_gateways(call: Call) -> web.StreamResponse:
    rows = await gateway_rows.listing(call.server.db, call.server.settings.store)
    items = [{"id": r["id"], "status": r["status"], "last_seen": r["last_seen"], "labels": r["n_labels"],
              "info": {**(json_column(r["info"]) or {}), "protocol": r["protocol"],
                       "public_key": None if r["public_key"] is None else bytes(r["public_key"]).hex()}}
             for r in rows]
    return json_response({"items": items})


def _job_json(row: Any) -> dict[str, Any]:
    out = dict(row)
    out["delta"] = bool(out["delta"])
    return out


async def list_jobs(call: Call) -> web.StreamResponse:
    request = call.request
    state = query_choice(request, "state", JOB_STATES)
    kind = query_choice(request, "kind", _JOB_KINDS)
    gateway = query_text(request, "gateway")
    mac = query_text(request, "mac")
    where = job_rows.JobFilter(store=call.server.settings.store, state=state, kind=kind, gateway=gateway,
                               mac=None if mac is None else normalise_mac(mac))
    limit, offset = page_params(request, default=100, maximum=1000)
    total, rows = await job_rows.page(call.server.db, where, limit, offset)
    return json_response({"items": [_job_json(r) for r in rows], "total": total, "limit": limit, "offset": offset})


def audit_item(row: Any) -> dict[str, Any]:
    """One audit row as the API shows it (before/after decoded)."""
    return {"id": row["id"], "at": row["at"], "actor": row["actor"], "role": row["role"], "action": row["action"],
            "target": row["target"], "before": json_column(row["before"]), "after": json_column(row["after"])}


async def list_audit(call: Call) -> web.StreamResponse:
    request, db = call.request, call.server.db
    actor, action, target = (query_text(request, name) for name in ("actor", "action", "target"))
    return await newest_first(call, lambda before, limit: audit.newest(
        db, before=before, limit=limit, actor=actor, action=action, target=target), audit_item)


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
    assert low is not None  # it has a default
    db = server.db
    labels = {s: 0 for s in LABEL_STATES} | await label_rows.count_by_state(db, store)
    low_battery = await label_rows.count_low_battery(db, store, low)
    up_to_date = await label_rows.count_up_to_date(db, store)
    gateways = {"online": 0, "offline": 0} | await gateway_rows.count_by_status(db, store)
    jobs = {s: 0 for s in JOB_STATES} | await job_rows.count_open_by_state(db, store)
    now = utcnow()
    since = iso(now - timedelta(hours=1))
    updates = await audit.count_since(db, "price.update", since)
    done = await job_rows.image_waits(db, store, since)
    waits = sorted(max(0.0, (parse_iso(r["finished_at"]) - parse_iso(r["origin_at"])).total_seconds()) for r in done)
    return json_response({
        "at": iso(now), "labels": labels, "labels_up_to_date": up_to_date,
        "labels_low_battery": low_battery, "battery_below": low,
        "gateways": gateways, "open_jobs": {"queued": jobs["queued"], "sent": jobs["sent"]},
        "updates_last_hour": updates,
        "time_to_shelf_s": {"count": len(waits), "p50": _percentile(waits, 0.5), "p99": _percentile(waits, 0.99)},
    })


async def whoami(call: Call) -> web.StreamResponse:
    """Who the token stands for: a client (the web UI's sign-in, the CLI) checks a token with it
    and shows only what the role may do."""
    who = call.who
    return json_response({"name": who.name, "role": who.role,
                          "stores": None if who.stores is None else sorted(who.stores)})


async def list_stores(call: Call) -> web.StreamResponse:
    """The stores served (a token restricted to some sees those only): a client offers them
    to choose from and calls ``/api/v1/stores/{store}/…``."""
    who = call.who
    items = [{"id": store, "name": s.store_name, "currency": s.currency, "language": s.language, "country": s.country,
              "timezone": s.timezone}
             for store, s in sorted((k, v.settings) for k, v in call.server.stores.items()) if who.may_store(store)]
    return json_response({"items": items, "default": call.server.settings.store})


async def metrics(call: Call) -> web.StreamResponse:
    body = generate_latest(call.server.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _database_ok(call: Call) -> str:
    try:
        await asyncio.wait_for(stores.count(call.server.db), _HEALTH_TIMEOUT_S)
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
    """``ok``, or ``degraded`` with ``reasons`` (``database: disk full (…)``, ``broker:
    disconnected since …``): what `Server.health` has seen, plus a read of the database now.
    The status code is 503 only while the database fails (reads, writes or integrity): a
    load balancer or a Kubernetes readiness probe then sends requests elsewhere; a broker
    outage does not make the HTTP API useless, so it is 200 and ``degraded``."""
    server = call.server
    server.check_broker()
    database = await _database_ok(call)
    reasons = server.health.reasons
    if database != "ok":
        reasons = [f"database: {database}", *reasons]
    elif not server.health.database_ok:
        database = "error: " + "; ".join(r.removeprefix("database: ") for r in reasons if r.startswith("database"))
    mqtt = _mqtt_state(call)
    healthy = database == "ok" and mqtt in ("connected", "disabled") and not reasons
    body: dict[str, Any] = {"status": "ok" if healthy else "degraded", "database": database, "mqtt": mqtt}
    if not healthy:
        body["reasons"] = reasons or [f"broker: {mqtt}"]
    return json_response(body, status=200 if database == "ok" else 503)


async def openapi(call: Call) -> web.StreamResponse:
    return json_response(call.request.app[DOCUMENT_KEY]())


ROUTES: Final = (
    Route("GET", "/api/v1/gateways", list_gateways, ANY_ROLE),
    Route("GET", "/api/v1/jobs", list_jobs, ANY_ROLE),
    Route("GET", "/api/v1/audit", list_audit, ADMIN_ONLY, chain="whole"),
    Route("GET", "/api/v1/summary", summary, ANY_ROLE),
    Route("GET", "/api/v1/me", whoami, ANY_ROLE, chain="shared"),
    Route("GET", "/api/v1/stores", list_stores, ANY_ROLE, chain="shared"),
    Route("GET", "/metrics", metrics, PUBLIC, chain="shared"),
    Route("GET", "/healthz", healthz, PUBLIC, chain="shared"),
    Route("GET", "/api/v1/openapi.json", openapi, PUBLIC, chain="shared"),
)
