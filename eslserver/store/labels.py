"""The ``labels`` table: every statement on it.

A label row is what the server knows of one shelf label: the product it shows, what it
should show (``expected_hash``) and what it reported showing (``displayed_hash``), its key
and counters, and the ``dirty`` mark that asks the render pipeline to draw it again.

Writes take the caller's transaction connection and never commit; reads take a `Reader` (the
transaction's connection, or the `Database` for committed data). Each operation is one
statement (or one ``executemany``); lists of MACs go in slices of `IN_MAX`. What to do with a
label (state changes, metrics, logging, auditing) is decided by the callers: `eslserver.labels`,
`eslserver.dispatch`, `eslserver.pipeline`, `eslserver.ingest`, `eslserver.catalogue`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from eslserver.db.database import Connection, Database, Reader, Row, fetchall, fetchone, placeholders, row_lock
from eslserver.store._listing import equal_to

__all__ = [
    "IN_MAX", "STATE_COLUMNS", "LabelFilter", "Pairing", "advance_counters", "bind", "bound_to", "claim_dirty", "clear_dirty",
    "count_by_state", "count_low_battery", "count_up_to_date", "dirty_batch", "dirty_generation", "dirty_marks",
    "discover", "drawn_with", "for_event", "forget_key", "get", "keys_in_clear", "mark_dirty", "mark_failed",
    "mark_silent_offline", "macs", "note_key_lost", "page", "pairing", "record_failure", "record_seen",
    "record_unkeyed_checkin", "register", "release_leases", "replace_keys", "reserve_counters", "set_expected",
    "set_key", "set_pending", "set_render_failed", "set_shown", "set_up_to_date", "states", "stores_of", "unbind",
    "use_factory_counter",
]

IN_MAX: Final = 500
"""MACs per ``IN (...)`` list, well under SQLite's bound on parameters."""

STATE_COLUMNS: Final = ("mac, sku, model, gateway, state, expected_hash, displayed_hash, battery_mv, temperature_c, "
                        "rssi, last_seen, updated_at, template, aisle")
"""The columns of the label state (`eslserver.labels.state_json`) plus ``template`` and ``aisle``."""

_ROW: Final = f"{STATE_COLUMNS}, label_key IS NOT NULL AS paired"

_generation = itertools.count(time.time_ns())


def dirty_generation() -> int:
    """A number larger than every earlier one in this process (and, being clock-based, across
    restarts): a label is marked dirty with a new generation, and the renderer clears the
    mark only if it is still the generation it rendered."""
    return next(_generation)


@dataclass(frozen=True, slots=True)
class Pairing:
    """Whether a label holds a key (``paired``) and whether a pairing job is open for it."""

    paired: bool
    pairing: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LabelFilter:
    """The filters of a label listing (all of them apply); a filter left None is not applied."""

    store: str
    state: str | None = None
    gateway: str | None = None
    sku: str | None = None
    aisle: str | None = None
    model: str | None = None
    template: str | None = None
    battery_below: int | None = None
    paired: bool | None = None
    stale: bool | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The WHERE clause (without the keyword) and its parameters."""
        clauses, params = equal_to({"store": self.store, "state": self.state, "gateway": self.gateway,
                                    "sku": self.sku, "aisle": self.aisle, "model": self.model,
                                    "template": self.template})
        if self.battery_below is not None:
            clauses.append("battery_mv < ?")
            params.append(self.battery_below)
        if self.paired is not None:
            clauses.append("label_key IS NOT NULL" if self.paired else "label_key IS NULL")
        if self.stale is not None:
            shown = "(expected_hash IS NOT NULL AND displayed_hash IS NOT DISTINCT FROM expected_hash)"
            clauses.append(f"NOT {shown}" if self.stale else shown)
        return " AND ".join(clauses), params


# -- reads --------------------------------------------------------------------------------
async def get(conn: Reader, mac: str) -> Row | None:
    """The label's `STATE_COLUMNS` and ``paired`` (it holds a key); None when it is not known."""
    return await fetchone(conn, f"SELECT {_ROW} FROM labels WHERE mac = ?", (mac,))


async def states(db: Database, macs: Iterable[str]) -> list[Row]:
    """`get`'s rows for every known label of `macs` (committed), in no particular order."""
    keys = list(macs)
    out: list[Row] = []
    for i in range(0, len(keys), IN_MAX):
        part = keys[i:i + IN_MAX]
        out.extend(await db.read(f"SELECT {_ROW} FROM labels WHERE mac IN ({placeholders(part)})", part))
    return out


async def page(db: Database, where: LabelFilter, limit: int, offset: int) -> tuple[int, list[Row]]:
    """(how many labels match, `get`'s rows of the page ``offset``…``offset + limit`` by MAC)."""
    clause, params = where.where()
    total = await db.read_one(f"SELECT COUNT(*) FROM labels WHERE {clause}", params)
    rows = await db.read(f"SELECT {_ROW} FROM labels WHERE {clause} ORDER BY mac LIMIT ? OFFSET ?",
                         [*params, limit, offset])
    return (total[0] if total else 0), rows


async def stores_of(db: Database, macs: Sequence[str]) -> dict[str, str]:
    """The store of each known label of `macs` (committed)."""
    out: dict[str, str] = {}
    for i in range(0, len(macs), IN_MAX):
        part = list(macs[i:i + IN_MAX])
        out.update((r["mac"], r["store"]) for r in await db.read(
            f"SELECT mac, store FROM labels WHERE mac IN ({placeholders(part)})", part))
    return out


async def macs(db: Database, store: str) -> list[str]:
    """Every label of `store` (committed)."""
    return [r["mac"] for r in await db.read("SELECT mac FROM labels WHERE store = ?", (store,))]


async def bound_to(db: Database, store: str, sku: str, *, limit: int) -> list[Row]:
    """``mac`` and ``state`` of the first `limit` labels (by MAC) bound to product `sku`."""
    return await db.read("SELECT mac, state FROM labels WHERE store = ? AND sku = ? ORDER BY mac LIMIT ?",
                         (store, sku, limit))


async def count_by_state(db: Database, store: str | None = None) -> dict[str, int]:
    """Labels per ``state`` (of `store`, or of every store), in state order."""
    if store is None:
        rows = await db.read("SELECT state, COUNT(*) FROM labels GROUP BY state ORDER BY state")
    else:
        rows = await db.read("SELECT state, COUNT(*) FROM labels WHERE store = ? GROUP BY state ORDER BY state",
                             (store,))
    return {r[0]: r[1] for r in rows}


async def count_low_battery(db: Database, store: str, below_mv: int) -> int:
    """Labels of `store` that last reported a battery below `below_mv`."""
    row = await db.read_one("SELECT COUNT(*) FROM labels WHERE store = ? AND battery_mv < ?", (store, below_mv))
    return row[0] if row else 0


async def count_up_to_date(db: Database, store: str) -> int:
    """Labels of `store` whose reported image is the one they should show."""
    row = await db.read_one("SELECT COUNT(*) FROM labels WHERE store = ? AND expected_hash IS NOT NULL "
                            "AND displayed_hash = expected_hash", (store,))
    return row[0] if row else 0


async def claim_dirty(conn: Connection, store: str, *, owner: str, now: str, until: str, limit: int) -> list[str]:
    """Lease up to `limit` dirty labels of `store` to `owner` until `until`, oldest mark first,
    and return their MACs: those no instance holds (no lease, a lease run out, or `owner`'s own
    from before a restart). Instances sharing a database claim at the same time without
    waiting for each other (rows another holds are skipped) and never claim the same label."""
    rows = await conn.fetchall(
        "UPDATE labels SET lease_owner = ?, lease_until = ? WHERE mac IN (SELECT mac FROM labels "
        "WHERE store = ? AND dirty <> 0 AND (lease_until IS NULL OR lease_until < ? OR lease_owner = ?) "
        f"ORDER BY dirty LIMIT ?{row_lock(conn, skip_locked=True)}) RETURNING mac",
        (owner, until, store, now, owner, limit))
    return [str(r[0]) for r in rows]


async def release_leases(conn: Connection, macs: Sequence[str], owner: str) -> None:
    """`owner` is done with these labels (drawn, or to be claimed again: their mark changed)."""
    for i in range(0, len(macs), IN_MAX):
        part = list(macs[i:i + IN_MAX])
        await conn.execute(f"UPDATE labels SET lease_owner = NULL, lease_until = NULL WHERE mac IN "
                           f"({placeholders(part)}) AND lease_owner = ?", (*part, owner))


async def dirty_batch(db: Database, macs: Sequence[str]) -> list[Row]:
    """The claimed labels of `macs` that are still dirty, oldest mark first, each with its
    product's ``record`` (None when the label is bound to no product that exists): ``mac,
    sku, model, template, displayed_hash, expected_hash, dirty, paired, origin_at, record``.
    Reads ``labels`` joined with ``products``; it lives here because it selects labels."""
    out: list[Row] = []
    for i in range(0, len(macs), IN_MAX):
        part = list(macs[i:i + IN_MAX])
        out.extend(await db.read(
            "SELECT l.mac, l.sku, l.model, l.template, l.displayed_hash, l.expected_hash, l.dirty, "
            "l.label_key IS NOT NULL AS paired, l.origin_at, p.record "
            "FROM labels l LEFT JOIN products p ON p.store = l.store AND p.sku = l.sku "
            f"WHERE l.mac IN ({placeholders(part)}) AND l.dirty <> 0", part))
    out.sort(key=lambda r: r["dirty"])
    return out


async def dirty_marks(conn: Reader, macs: Sequence[str]) -> dict[str, int]:
    """The current ``dirty`` generation of each known label of `macs` (0: none); in a
    transaction on PostgreSQL the rows stay locked until it ends, so that an instance whose
    lease ran out and the one that took over cannot both write a result."""
    out: dict[str, int] = {}
    for i in range(0, len(macs), IN_MAX):
        part = macs[i:i + IN_MAX]
        for row in await fetchall(conn, f"SELECT mac, dirty FROM labels WHERE mac IN ({placeholders(part)})"
                                        f"{row_lock(conn)}", part):
            out[row["mac"]] = row["dirty"]
    return out


async def for_event(conn: Reader, mac: str) -> Row | None:
    """What a gateway event about the label is judged by: ``sku, label_key, rx_highest,
    expected_hash, origin_at, state, key_lost_at``; None when the label is not known. In a
    transaction on PostgreSQL the row stays locked until it ends: two instances applying
    events of one label take turns, so a frame delivered to both counts once."""
    return await fetchone(conn, "SELECT sku, label_key, rx_highest, expected_hash, origin_at, state, key_lost_at "
                                f"FROM labels WHERE mac = ?{row_lock(conn)}", (mac,))


async def pairing(conn: Reader, mac: str) -> Pairing | None:
    """Whether the label holds a key and whether a pairing job is open for it; None when the
    label is not known. Reads ``jobs`` too; it lives here because it selects a label."""
    row = await fetchone(conn, "SELECT label_key IS NOT NULL AS paired, EXISTS (SELECT 1 FROM jobs WHERE mac = ? "
                               "AND kind = 'pair' AND state IN ('queued', 'sent')) AS pairing "
                               "FROM labels WHERE mac = ?", (mac, mac))
    return None if row is None else Pairing(bool(row["paired"]), bool(row["pairing"]))


# -- registering and binding ---------------------------------------------------------------
async def register(conn: Connection, *, mac: str, store: str, model: str, now: str,
                   gateway: str | None = None, sku: str | None = None, template: str | None = None,
                   aisle: str | None = None) -> bool:
    """Add a label unless it is known; True if it was added. A label added with a product is
    ``pending`` and dirty (it must be drawn), one without is ``unpaired``."""
    cur = await conn.execute(
        "INSERT INTO labels (mac, store, sku, model, template, gateway, aisle, state, updated_at, dirty) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (mac, store, sku, model, template, gateway, aisle, "unpaired" if sku is None else "pending",
         now, dirty_generation() if sku is not None else 0))
    return cur > 0


async def discover(conn: Connection, *, mac: str, store: str, model: str, gateway: str,
                   rssi: int | None, battery_mv: int | None, factory_counter: int, now: str) -> None:
    """Add a label first heard by `gateway` (``unpaired``, not known before)."""
    await conn.execute(
        "INSERT INTO labels (mac, store, model, gateway, state, rssi, battery_mv, last_seen, updated_at, "
        "factory_counter) VALUES (?, ?, ?, ?, 'unpaired', ?, ?, ?, ?, ?)",
        (mac, store, model, gateway, rssi, battery_mv, now, now, factory_counter))


async def bind(conn: Connection, mac: str, sku: str, *, template: str | None, now: str) -> None:
    """Show product `sku` on the known label `mac` (and `template`, unless None keeps its
    own): it is marked dirty and is ``pending`` (an ``offline`` label stays offline) until
    the pipeline has drawn the new image and the label's own word says it shows it. When the
    product or the template changes, the old ``expected_hash`` is forgotten: it was the
    image of the old binding, and a label showing it is not up to date with the new one."""
    await conn.execute(
        "UPDATE labels SET expected_hash = CASE WHEN sku IS NOT DISTINCT FROM ? AND (CAST(? AS TEXT) IS NULL "
        "OR template IS NOT DISTINCT FROM ?) "
        "THEN expected_hash END, sku = ?, template = COALESCE(?, template), dirty = ?, "
        "origin_at = COALESCE(origin_at, ?), state = CASE WHEN state = 'offline' THEN state "
        "ELSE 'pending' END, updated_at = ? WHERE mac = ?",
        (sku, template, template, sku, template, dirty_generation(), now, now, mac))


async def unbind(conn: Connection, mac: str, *, now: str) -> None:
    """The label shows no product: ``unpaired``, with no dirty mark and nothing waiting."""
    await conn.execute("UPDATE labels SET sku = NULL, state = 'unpaired', dirty = 0, origin_at = NULL, "
                       "updated_at = ? WHERE mac = ?", (now, mac))


# -- the dirty mark -------------------------------------------------------------------------
def _drawn_with(template: str, models: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause of the bound labels drawn with `template`: named on the label, or the
    default template of its model, one of `models`."""
    return (f"sku IS NOT NULL AND (template = ? OR (template IS NULL AND model IN ({placeholders(models) or 'NULL'})))",
            (template, *models))


async def drawn_with(conn: Reader, template: str, models: Sequence[str]) -> list[Row]:
    """``mac`` and ``model`` of the bound labels drawn with `template` (`_drawn_with`), by MAC."""
    where, params = _drawn_with(template, models)
    return await fetchall(conn, f"SELECT mac, model FROM labels WHERE {where} ORDER BY mac", params)


async def mark_dirty(conn: Connection, origin_at: str, *, mac: str | None = None,
                     store: str | None = None, sku: str | None = None, template: str | None = None,
                     models: Sequence[str] = (), pending: bool = False, reopen: bool = False) -> None:
    """Ask the pipeline to draw labels again, with a new `dirty_generation`; ``origin_at``
    (when the change arrived) is kept if an older change is still unshown. Which labels:
    the label `mac`; or those of `store` bound to `sku`; or the bound labels drawn with
    `template` (named, or by default for one of `models`). `pending` also sets ``state``
    to ``pending``; `reopen` turns only ``ok`` into ``pending`` (a template change: the label
    was verified against an image that is no longer the one it should show)."""
    if pending:
        sets = "dirty = ?, state = 'pending', "
    elif reopen:
        sets = "dirty = ?, state = CASE WHEN state = 'ok' THEN 'pending' ELSE state END, "
    else:
        sets = "dirty = ?, "
    where: str
    params: tuple[Any, ...]
    if mac is not None and store is None and sku is None and template is None:
        where, params = "mac = ?", (mac,)
    elif mac is None and store is not None and sku is not None and template is None:
        where, params = "store = ? AND sku = ?", (store, sku)
    elif mac is None and store is None and sku is None and template is not None:
        where, params = _drawn_with(template, models)
    else:
        raise ValueError(f"mark_dirty: expected mac, store and sku, or template; got mac={mac!r}, "
                         f"store={store!r}, sku={sku!r}, template={template!r}")
    await conn.execute(f"UPDATE labels SET {sets}origin_at = COALESCE(origin_at, ?) WHERE {where}",
                       (dirty_generation(), origin_at, *params))


async def set_shown(conn: Connection, rows: Iterable[tuple[str, str, str]]) -> None:
    """Rendered labels that already show their image: ``(expected_hash, now, mac)`` each;
    state ``ok``, nothing waiting, mark cleared."""
    await conn.executemany("UPDATE labels SET expected_hash = ?, state = 'ok', origin_at = NULL, "
                           "updated_at = ?, dirty = 0 WHERE mac = ?", rows)


async def set_expected(conn: Connection, rows: Iterable[tuple[str, str, str]]) -> None:
    """Rendered labels whose new image is on its way: ``(expected_hash, now, mac)`` each;
    state ``pending`` (an ``offline`` label stays offline), mark cleared."""
    await conn.executemany("UPDATE labels SET expected_hash = ?, state = CASE WHEN state = 'offline' "
                           "THEN state ELSE 'pending' END, updated_at = ?, dirty = 0 WHERE mac = ?", rows)


async def set_render_failed(conn: Connection, rows: Iterable[tuple[str, str]]) -> None:
    """Labels whose render failed: ``(now, mac)`` each; state ``failed``, mark cleared (they
    keep their last good image)."""
    await conn.executemany("UPDATE labels SET state = 'failed', updated_at = ?, dirty = 0 WHERE mac = ?", rows)


async def clear_dirty(conn: Connection, rows: Iterable[tuple[str, int]]) -> None:
    """``(mac, generation)`` each: clear the mark only where it still holds that generation
    (a newer change is drawn again)."""
    await conn.executemany("UPDATE labels SET dirty = 0 WHERE mac = ? AND dirty = ?", rows)


# -- keys and counters ---------------------------------------------------------------------
async def reserve_counters(conn: Connection, mac: str, budget: int) -> None:
    """Move the label's transmit counter past the `budget` a job may use."""
    await conn.execute("UPDATE labels SET tx_counter = tx_counter + ? WHERE mac = ?", (budget, mac))


async def use_factory_counter(conn: Connection, mac: str) -> None:
    """A pairing job used the factory counter once more."""
    await conn.execute("UPDATE labels SET factory_counter = factory_counter + 1 WHERE mac = ?", (mac,))


async def set_key(conn: Connection, mac: str, key: bytes, *, tx_counter: int, rx_highest: int) -> None:
    """The label's new long-term key, with the counters it starts at."""
    await conn.execute("UPDATE labels SET label_key = ?, tx_counter = ?, rx_highest = ?, key_lost_at = NULL "
                       "WHERE mac = ?", (key, tx_counter, rx_highest, mac))


async def forget_key(conn: Connection, mac: str) -> None:
    """The label lost its key (a technician's reset): it must be paired again."""
    await conn.execute("UPDATE labels SET label_key = NULL, key_lost_at = NULL WHERE mac = ?", (mac,))


async def note_key_lost(conn: Connection, mac: str, *, now: str) -> bool:
    """A label holding a key checked in without one: note when (the first time only); True if
    this is news. Nothing else changes: a key-less check-in proves nothing (anybody can send
    one), so the key stays until a technician resets the label."""
    cur = await conn.execute("UPDATE labels SET key_lost_at = ? WHERE mac = ? AND label_key IS NOT NULL "
                             "AND key_lost_at IS NULL", (now, mac))
    return cur > 0


async def keys_in_clear(db: Database) -> list[Row]:
    """``mac, store, label_key`` of the labels whose key an older release stored in clear (16
    bytes; a sealed key is longer: `eslserver.keyvault`)."""
    return await db.read("SELECT mac, store, label_key FROM labels WHERE length(label_key) = 16")


async def replace_keys(conn: Connection, rows: Iterable[tuple[bytes, str]]) -> None:
    """``(sealed key, mac)`` each: the label's key, sealed, in place of the clear one (the
    counters stay: it is the same key)."""
    await conn.executemany("UPDATE labels SET label_key = ? WHERE mac = ?", rows)


async def advance_counters(conn: Connection, mac: str, *, tx_counter: int,
                           rx_highest: int | None) -> None:
    """Counters only move forward: each becomes the larger of the stored and the given one
    (None: leave ``rx_highest`` as it is)."""
    await conn.execute("UPDATE labels SET tx_counter = CASE WHEN tx_counter < ? THEN ? ELSE tx_counter END, "
                       "rx_highest = CASE WHEN rx_highest < COALESCE(?, 0) THEN ? ELSE rx_highest END WHERE mac = ?",
                       (tx_counter, tx_counter, rx_highest, rx_highest, mac))


# -- what the label reported ----------------------------------------------------------------
async def record_seen(conn: Connection, mac: str, *, now: str, gateway: str | None,
                      displayed_hash: str | None, battery_mv: int | None, temperature_c: int | None,
                      rssi: int | None) -> None:
    """The label was heard (authenticated): what it reported (None keeps the stored value),
    when, through which gateway; its failure count starts again, and it has its key after all."""
    await conn.execute(
        "UPDATE labels SET displayed_hash = COALESCE(?, displayed_hash), battery_mv = COALESCE(?, battery_mv), "
        "temperature_c = COALESCE(?, temperature_c), rssi = COALESCE(?, rssi), last_seen = ?, "
        "gateway = COALESCE(?, gateway), failures = 0, key_lost_at = NULL, updated_at = ? WHERE mac = ?",
        (displayed_hash, battery_mv, temperature_c, rssi, now, gateway, now, mac))


async def record_unkeyed_checkin(conn: Connection, mac: str, *, factory_counter: int, gateway: str,
                                 rssi: int | None, now: str) -> None:
    """A check-in without a key (a new or reset label): its factory counter moves forward,
    and where and when it was heard."""
    await conn.execute("UPDATE labels SET factory_counter = CASE WHEN factory_counter < ? THEN ? ELSE factory_counter "
                       "END, gateway = ?, rssi = ?, last_seen = ? WHERE mac = ?",
                       (factory_counter, factory_counter, gateway, rssi, now, mac))


async def set_up_to_date(conn: Connection, mac: str) -> None:
    """The label reported the image it should show: ``ok``, nothing waiting."""
    await conn.execute("UPDATE labels SET state = 'ok', origin_at = NULL WHERE mac = ?", (mac,))


async def set_pending(conn: Connection, mac: str) -> None:
    """An update for the label is on its way (or about to be)."""
    await conn.execute("UPDATE labels SET state = 'pending' WHERE mac = ?", (mac,))


async def mark_failed(conn: Connection, mac: str, *, now: str) -> None:
    """A job for the label could not be built: ``failed``."""
    await conn.execute("UPDATE labels SET state = 'failed', updated_at = ? WHERE mac = ?", (now, mac))


async def record_failure(conn: Connection, mac: str, state: str, *, now: str) -> None:
    """A job for the label failed for good: `state` (``offline`` or ``failed``) and one more
    failure counted."""
    await conn.execute("UPDATE labels SET state = ?, failures = failures + 1, updated_at = ? WHERE mac = ?",
                       (state, now, mac))


async def mark_silent_offline(conn: Connection, store: str, *, heard_before: str,
                              now: str) -> list[str]:
    """`store`'s labels showing a product (``ok`` or ``pending``) and last heard before
    `heard_before`: ``offline``, in one statement (they missed their check-ins; the next one
    brings them back). Returns their MACs, so their new state can be published."""
    rows = await conn.fetchall(
        "UPDATE labels SET state = 'offline', updated_at = ? WHERE store = ? AND state IN ('ok', 'pending') "
        "AND last_seen IS NOT NULL AND last_seen < ? RETURNING mac", (now, store, heard_before))
    return [str(row[0]) for row in rows]
