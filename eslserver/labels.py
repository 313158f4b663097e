"""Labels: their state as the world sees it, binding to products, and commands (LED).

The label state (``LabelState`` in docs/mqtt.asyncapi.yaml) is one JSON shape, served by the
HTTP API and published retained on ``{prefix}/{store}/label/{mac}/state``. A label is up to
date exactly when the hash it reported (``displayed_hash``) equals the hash the server
rendered for it (``expected_hash``); ``state`` says why not when it is not:

- ``unpaired``: bound to no product;
- ``pending``: an update is on its way;
- ``offline``: the label did not answer for ``max_attempts`` tries; it is caught up when it
  checks in again;
- ``failed``: the label refused the update (for instance a flat battery);
- ``ok``: it shows what it should.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from eslserver.audit import Who, record_audit
from eslserver.config import Settings
from eslserver.db.database import Connection, Database
from eslserver.jobs import JobKind, Outbox
from eslserver.keyvault import KeyVault
from eslserver.metrics import Metrics
from eslserver.store import labels as label_rows
from eslserver.store import products
from eslserver.store.labels import STATE_COLUMNS
from eslserver.timeutil import iso, utcnow
from firmware_proto.errors import FrameError
from firmware_proto.frames import address_bytes
from firmware_proto.models import get_model

__all__ = ["LED_FLASH", "STATE_COLUMNS", "LabelError", "Labels", "normalise_mac", "state_json"]

LED_FLASH = {"led_index": 0, "color_brightness": 0xC3, "flash_pattern": 0b1010101010, "off_period": 2,
             "on_period": 2}
"""LED control parameters for a "find me" flash (red, full brightness, 200 ms on / 200 ms off);
``repeat`` is set per request: bit 0 = 1 means the rest is a duration in seconds (ESL Service)."""


class LabelError(ValueError):
    """A label request that cannot be done (stable ``code``, human ``detail``)."""

    def __init__(self, code: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.status = status


def normalise_mac(mac: str) -> str:
    """``aa-bb-cc-dd-ee-ff`` / ``aabbccddeeff`` / ``AA:BB:…`` → ``AA:BB:CC:DD:EE:FF``."""
    raw = mac.strip().replace("-", ":")
    if ":" not in raw and len(raw) == 12:
        raw = ":".join(raw[i:i + 2] for i in range(0, 12, 2))
    try:
        data = address_bytes(raw)
    except (FrameError, ValueError, TypeError):
        raise LabelError("bad_mac", f"mac: expected AA:BB:CC:DD:EE:FF, got {mac!r}") from None
    return ":".join(f"{b:02X}" for b in data)


def state_json(row: Any) -> dict[str, Any]:
    """The label-state JSON (docs/mqtt.asyncapi.yaml) from a labels row (with `STATE_COLUMNS`)."""
    return {
        "mac": row["mac"], "sku": row["sku"], "model": row["model"], "gateway": row["gateway"],
        "state": row["state"], "expected_hash": row["expected_hash"], "displayed_hash": row["displayed_hash"],
        "battery_mv": row["battery_mv"], "temperature_c": row["temperature_c"], "rssi": row["rssi"],
        "last_seen": row["last_seen"], "updated_at": row["updated_at"],
    }


class Labels:
    """Label queries and the writes a technician makes."""

    def __init__(self, db: Database, settings: Settings, metrics: Metrics, vault: KeyVault, *,
                 on_dirty: Callable[[], None] = lambda: None, on_jobs: Callable[[], None] = lambda: None,
                 on_states: Callable[[Iterable[str]], None] = lambda macs: None) -> None:
        self.db = db
        self.vault = vault
        self.settings = settings
        self.metrics = metrics
        self.outbox = Outbox(db, metrics)
        self.on_dirty = on_dirty
        self.on_jobs = on_jobs
        self.on_states = on_states

    async def state(self, mac: str) -> dict[str, Any] | None:
        row = await label_rows.get(self.db, normalise_mac(mac))
        return None if row is None else state_json(row)

    async def states(self, macs: Iterable[str]) -> list[dict[str, Any]]:
        return [state_json(r) for r in await label_rows.states(self.db, macs)]

    async def register(self, conn: Connection, mac: str, model: str, *, gateway: str | None = None,
                       sku: str | None = None, template: str | None = None, aisle: str | None = None) -> bool:
        """Add a label the server has not seen (discovered, or imported); True if it was new."""
        get_model(model)
        return await label_rows.register(conn, mac=mac, store=self.settings.store, model=model, now=iso(utcnow()),
                                         gateway=gateway, sku=sku, template=template, aisle=aisle)

    async def bind(self, mac: str, sku: str, *, actor: Who, template: str | None = None,
                   model: str | None = None) -> dict[str, Any]:
        """Show product `sku` on label `mac` (a label unknown so far needs its `model`)."""
        mac = normalise_mac(mac)
        now = utcnow()
        async with self.db.transaction() as conn:
            if not await products.exists(conn, self.settings.store, sku):
                raise LabelError("unknown_sku", f"sku {sku!r} is not in the catalogue", 404)
            before = await label_rows.get(conn, mac)
            if before is None:
                if model is None:
                    raise LabelError("unknown_label", f"label {mac} has not been seen by any gateway; "
                                                      "give its model to register it", 404)
                await self.register(conn, mac, model, sku=sku, template=template)
            else:
                await label_rows.bind(conn, mac, sku, template=template, now=iso(now))
            after = await label_rows.get(conn, mac)
            await record_audit(conn, actor, "label.bind", mac, state_json(before) if before else None,
                               state_json(after))
        self.on_dirty()
        self.on_states([mac])
        assert after is not None
        return state_json(after)

    async def unbind(self, mac: str, *, actor: Who) -> dict[str, Any]:
        """The label shows nothing in particular any more (its image stays until re-bound)."""
        mac = normalise_mac(mac)
        async with self.db.transaction() as conn:
            before = await label_rows.get(conn, mac)
            if before is None:
                raise LabelError("unknown_label", f"label {mac} is not known", 404)
            await self.outbox.supersede_images(conn, [mac], utcnow())
            await label_rows.unbind(conn, mac, now=iso(utcnow()))
            after = await label_rows.get(conn, mac)
            await record_audit(conn, actor, "label.unbind", mac, state_json(before), state_json(after))
        self.on_states([mac])
        assert after is not None
        return state_json(after)

    async def flash(self, mac: str, *, seconds: int, actor: Who) -> int:
        """Queue an LED flash of `seconds` (the technician's "find this label"); the job id."""
        mac = normalise_mac(mac)
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not 1 <= seconds <= 3600:
            raise LabelError("bad_seconds", f"seconds: expected an integer 1..3600, got {seconds!r}")
        async with self.db.transaction() as conn:
            row = await label_rows.get(conn, mac)
            if row is None:
                raise LabelError("unknown_label", f"label {mac} is not known", 404)
            if not row["paired"]:
                raise LabelError("not_paired", f"label {mac} is not paired yet: it cannot be commanded", 409)
            params = dict(LED_FLASH, repeat=(seconds << 1) | 1)
            job = await self.outbox.insert(conn, store=self.settings.store, mac=mac, kind=JobKind.COMMAND,
                                           now=utcnow(),
                                           command=json.dumps({"name": "led_control", "params": params}).encode())
            await record_audit(conn, actor, "label.flash", mac, None, {"seconds": seconds, "job": job})
        self.on_jobs()
        return job

    async def reset(self, mac: str, *, actor: Who) -> dict[str, Any]:
        """A technician's word that the label lost its key (a factory reset, a new battery that
        wiped it): forget the key and pair it again with its factory key; its product's image
        follows. The server never does this on a label's own key-less check-in (anybody can
        send one), only here, audited. Returns the label state."""
        mac = normalise_mac(mac)
        now = utcnow()
        async with self.db.transaction() as conn:
            before = await label_rows.get(conn, mac)
            if before is None:
                raise LabelError("unknown_label", f"label {mac} is not known", 404)
            key_lost = await label_rows.for_event(conn, mac)
            await self.outbox.supersede_images(conn, [mac], now)
            await label_rows.forget_key(conn, mac)
            queued = await self.outbox.ensure_pair(conn, store=self.settings.store, mac=mac, now=now,
                                                   sealed_key=self.vault.new_label_key(self.settings.store, mac))
            if before["sku"] is not None:
                await label_rows.mark_dirty(conn, iso(now), mac=mac, pending=True)
            after = await label_rows.get(conn, mac)
            await record_audit(conn, actor, "label.reset", mac, state_json(before),
                               {**state_json(after), "pairing_queued": queued,
                                "key_lost_at": None if key_lost is None else key_lost["key_lost_at"]})
        self.on_jobs()
        self.on_dirty()
        self.on_states([mac])
        assert after is not None
        return state_json(after)
