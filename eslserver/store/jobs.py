"""The ``jobs`` table (the outbox): every statement on it.

A job is ``queued``, then ``sent`` to a gateway, then ``done``, ``failed`` or back to
``queued``; a queued image job can be ``superseded``. `eslserver.jobs.Outbox` creates and
ends jobs through this module (and counts them); `eslserver.dispatch` claims, requeues and
reads them. Writes take the caller's transaction connection and never commit; reads take a
`Reader` (the transaction's connection, or the `Database` for committed data). Each
operation is one statement (or one ``executemany``; lists of MACs go in slices of
`eslserver.store.labels.IN_MAX`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from eslserver.db.database import Connection, Database, Reader, Row, fetchall, fetchone, placeholders, row_lock
from eslserver.store._listing import batch_limit, equal_to
from eslserver.store.labels import IN_MAX

__all__ = [
    "JOB_COLUMNS", "JobFilter", "claimable", "count_by_state", "count_open_by_state", "count_sent_by", "finish",
    "get", "has_open", "image_waits", "insert", "insert_many", "mark_sent", "next_attempt_at", "open_by_kind",
    "open_for_label", "open_images", "open_pairings", "overdue", "page", "pair_keys_in_clear", "replace_pair_keys", "requeue",
    "requeue_sent_by", "requeue_whole_image", "sent_per_gateway", "supersede_images", "prune_before",
]

JOB_COLUMNS: Final = ("id, mac, gateway, kind, state, image_hash, base_hash, region, delta, format, attempts, "
                      "next_attempt_at, created_at, sent_at, finished_at, origin_at, error")
"""The columns of a job listing (everything but the payload and the command)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFilter:
    """The filters of a job listing (all of them apply); a filter left None is not applied."""

    store: str
    state: str | None = None
    kind: str | None = None
    gateway: str | None = None
    mac: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The WHERE clause (without the keyword) and its parameters."""
        clauses, params = equal_to({"store": self.store, "state": self.state, "kind": self.kind,
                                    "gateway": self.gateway, "mac": self.mac})
        return " AND ".join(clauses), params


# -- creating and ending --------------------------------------------------------------------
async def insert(conn: Connection, values: Mapping[str, Any]) -> int:
    """Add one job with these column values; its id."""
    names = list(values)
    row = await conn.fetchone(f"INSERT INTO jobs ({', '.join(names)}) VALUES ({placeholders(names)}) RETURNING id",
                              list(values.values()))
    assert row is not None
    return int(row[0])


async def insert_many(conn: Connection, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Add one job per row, a row holding the values of `columns` (one ``executemany``)."""
    await conn.executemany(f"INSERT INTO jobs ({', '.join(columns)}) VALUES ({placeholders(columns)})", rows)


async def finish(conn: Connection, job_id: int, outcome: str, now: str, error: str | None) -> str | None:
    """End the job as `outcome` if it is open; its kind, or None when it was not open (then
    nothing changed)."""
    row = await fetchone(conn, "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ? AND state IN "
                               "('queued', 'sent') RETURNING kind", (outcome, now, error, job_id))
    return None if row is None else str(row["kind"])


async def supersede_images(conn: Connection, macs: Sequence[str], now: str) -> int:
    """End the queued image jobs of `macs` as ``superseded``; how many."""
    superseded = 0
    for i in range(0, len(macs), IN_MAX):
        part = macs[i:i + IN_MAX]
        rows = await fetchall(conn, f"UPDATE jobs SET state = 'superseded', finished_at = ? WHERE kind = 'image' "
                                    f"AND state = 'queued' AND mac IN ({placeholders(part)}) RETURNING id",
                              (now, *part))
        superseded += len(rows)
    return superseded


# -- sending ------------------------------------------------------------------------------
async def claimable(conn: Reader, store: str, now: str, limit: int) -> list[Row]:
    """Up to `limit` queued jobs of `store` due by `now`, oldest first, each the oldest open
    job of its label and for a label that is not ``offline``, with what building its
    envelope needs from the label (``gateway, label_key, tx_counter, rx_highest,
    factory_counter, displayed_hash``). Joins ``labels``; it lives here because it selects jobs.
    In a transaction on PostgreSQL the jobs and labels stay locked until it ends, and rows
    another instance holds are skipped: instances sharing a database never send one job twice
    or spend one counter twice."""
    return await fetchall(
        conn,
        "SELECT j.id, j.mac, j.kind, j.image_hash, j.base_hash, j.region, j.delta, j.format, j.payload, "
        "j.command, j.attempts, l.gateway, l.label_key, l.tx_counter, l.rx_highest, l.factory_counter, "
        "l.displayed_hash FROM jobs j JOIN labels l ON l.mac = j.mac "
        "WHERE j.store = ? AND j.state = 'queued' AND j.next_attempt_at <= ? AND l.state <> 'offline' "
        # no older open job of the label: one range of index jobs_mac (mac, id) per candidate. The
        # state is tested as NOT IN the finished ones on purpose: written as IN ('queued', 'sent'),
        # it matches the partial indexes of open jobs, and PostgreSQL, with statistics older than a
        # repricing, ANDed a bitmap of every open job into each probe (1.4 s per claim at 3,000 jobs)
        "AND NOT EXISTS (SELECT 1 FROM jobs k WHERE k.mac = j.mac AND k.id < j.id "
        "AND k.state NOT IN ('done', 'failed', 'superseded')) "
        f"ORDER BY j.id LIMIT ?{row_lock(conn, skip_locked=True, of='j, l')}", (store, now, limit))


async def mark_sent(conn: Connection, job_id: int, gateway: str, now: str) -> None:
    """The queued job goes to `gateway`: ``sent``, one more attempt."""
    await conn.execute("UPDATE jobs SET state = 'sent', gateway = ?, attempts = attempts + 1, sent_at = ? "
                       "WHERE id = ? AND state = 'queued'", (gateway, now, job_id))


async def requeue(conn: Connection, job_id: int, next_attempt_at: str, error: str) -> None:
    """Try the job again at `next_attempt_at` (``queued``), noting why the last try failed."""
    await conn.execute("UPDATE jobs SET state = 'queued', next_attempt_at = ?, error = ? WHERE id = ?",
                       (next_attempt_at, error, job_id))


async def requeue_whole_image(conn: Connection, job_id: int, now: str, error: str) -> None:
    """Try the image job again at once with the whole stored image instead of an update
    against the image the label was thought to show. Reads ``images``."""
    await conn.execute("UPDATE jobs SET state = 'queued', base_hash = NULL, region = NULL, delta = 0, "
                       "format = (SELECT format FROM images WHERE hash = jobs.image_hash), "
                       "payload = (SELECT payload FROM images WHERE hash = jobs.image_hash), "
                       "next_attempt_at = ?, error = ? WHERE id = ?", (now, error, job_id))


async def requeue_sent_by(conn: Connection, gateway: str, now: str, *, store: str | None = None) -> None:
    """Hand every job sent to `gateway` (of `store`, when given: gateway ids are unique only
    within a store) back to the queue, due `now`."""
    if store is None:
        await conn.execute("UPDATE jobs SET state = 'queued', next_attempt_at = ? WHERE state = 'sent' "
                           "AND gateway = ?", (now, gateway))
    else:
        await conn.execute("UPDATE jobs SET state = 'queued', next_attempt_at = ? WHERE state = 'sent' "
                           "AND gateway = ? AND store = ?", (now, gateway, store))


async def count_sent_by(conn: Reader, gateway: str, *, store: str) -> int:
    """How many jobs of `store` are out with `gateway`."""
    row = await fetchone(conn, "SELECT COUNT(*) FROM jobs WHERE state = 'sent' AND gateway = ? AND store = ?",
                         (gateway, store))
    return int(row[0]) if row is not None else 0


# -- reads --------------------------------------------------------------------------------
async def get(conn: Reader, job_id: int, mac: str) -> Row | None:
    """``kind, state, attempts, command, image_hash, gateway`` of job `job_id` if it is for `mac`
    (locked until the transaction ends, on PostgreSQL: lock its label first, `labels.for_event`)."""
    return await fetchone(conn, "SELECT kind, state, attempts, command, image_hash, gateway FROM jobs "
                          f"WHERE id = ? AND mac = ?{row_lock(conn)}", (job_id, mac))


async def has_open(conn: Reader, mac: str) -> bool:
    """True when a job for the label is ``queued`` or ``sent``."""
    return await fetchone(conn, "SELECT 1 FROM jobs WHERE mac = ? AND state IN ('queued', 'sent')",
                          (mac,)) is not None


async def open_pairings(conn: Reader, mac: str) -> list[Row]:
    """``id`` and ``command`` (the new key) of the label's open pairing jobs, newest first."""
    return await fetchall(conn, "SELECT id, command FROM jobs WHERE mac = ? AND kind = 'pair' "
                                "AND state IN ('queued', 'sent') ORDER BY id DESC", (mac,))


async def pair_keys_in_clear(db: Database) -> list[Row]:
    """``id, store, mac, command`` of the pairing jobs (open or not) whose new key an older
    release stored in clear (16 bytes; a sealed key is longer: `eslserver.keyvault`)."""
    return await db.read("SELECT id, store, mac, command FROM jobs WHERE kind = 'pair' AND length(command) = 16")


async def replace_pair_keys(conn: Connection, rows: Sequence[tuple[bytes, int]]) -> None:
    """``(sealed key, job id)`` each: the pairing job's new key, sealed, in place of the clear one."""
    await conn.executemany("UPDATE jobs SET command = ? WHERE id = ? AND kind = 'pair'", rows)


async def open_images(conn: Reader, macs: Sequence[str]) -> set[tuple[str, str]]:
    """``(mac, image_hash)`` of every open image job of `macs`."""
    out: set[tuple[str, str]] = set()
    for i in range(0, len(macs), IN_MAX):
        part = macs[i:i + IN_MAX]
        for row in await fetchall(conn, f"SELECT mac, image_hash FROM jobs WHERE kind = 'image' AND state IN "
                                        f"('queued', 'sent') AND mac IN ({placeholders(part)})", part):
            out.add((row["mac"], row["image_hash"]))
    return out


async def open_for_label(db: Database, mac: str) -> list[Row]:
    """``id, kind, state, attempts, created_at, error`` of the label's open jobs, oldest first."""
    return await db.read("SELECT id, kind, state, attempts, created_at, error FROM jobs "
                         "WHERE mac = ? AND state IN ('queued', 'sent') ORDER BY id", (mac,))


async def overdue(db: Database, sent_before: str) -> list[Row]:
    """``id`` and ``mac`` of the jobs still ``sent`` that were sent before `sent_before`."""
    return await db.read("SELECT id, mac FROM jobs WHERE state = 'sent' AND sent_at < ?", (sent_before,))


async def next_attempt_at(db: Database) -> str | None:
    """The earliest ``next_attempt_at`` of the queued jobs; None when none is queued."""
    row = await db.read_one("SELECT MIN(next_attempt_at) FROM jobs WHERE state = 'queued'")
    return row[0] if row else None


async def sent_per_gateway(db: Database, store: str) -> dict[str, int]:
    """How many jobs each gateway of `store` has out (``sent``): gateway ids are unique only
    within a store, and each gateway has its own in-flight budget."""
    return {r["gateway"]: r["n"] for r in await db.read(
        "SELECT gateway, COUNT(*) AS n FROM jobs WHERE state = 'sent' AND store = ? GROUP BY gateway", (store,))}


async def open_by_kind(db: Database) -> dict[str, int]:
    """How many jobs of each kind are open (``queued`` or ``sent``)."""
    return {r["kind"]: r["n"] for r in await db.read(
        "SELECT kind, COUNT(*) AS n FROM jobs WHERE state IN ('queued', 'sent') GROUP BY kind")}


async def count_by_state(db: Database) -> dict[str, int]:
    """Jobs per ``state``, all stores."""
    return {r[0]: r[1] for r in await db.read("SELECT state, COUNT(*) FROM jobs GROUP BY state")}


async def count_open_by_state(db: Database, store: str) -> dict[str, int]:
    """`store`'s open jobs per ``state`` (``queued``, ``sent``)."""
    return {r[0]: r[1] for r in await db.read(
        "SELECT state, COUNT(*) FROM jobs WHERE store = ? AND state IN ('queued', 'sent') GROUP BY state", (store,))}


async def image_waits(db: Database, store: str, finished_since: str) -> list[Row]:
    """``origin_at`` and ``finished_at`` of `store`'s image jobs done since `finished_since`
    that know when their change arrived (time-to-shelf)."""
    return await db.read("SELECT origin_at, finished_at FROM jobs WHERE store = ? AND kind = 'image' "
                         "AND state = 'done' AND finished_at >= ? AND origin_at IS NOT NULL", (store, finished_since))


async def page(db: Database, where: JobFilter, limit: int, offset: int) -> tuple[int, list[Row]]:
    """(how many jobs match, their `JOB_COLUMNS` rows ``offset``…``offset + limit``, newest first)."""
    clause, params = where.where()
    total = await db.read_one(f"SELECT COUNT(*) FROM jobs WHERE {clause}", params)
    rows = await db.read(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                         [*params, limit, offset])
    return (total[0] if total else 0), rows


# -- retention ----------------------------------------------------------------------------
async def prune_before(conn: Connection, cutoff_iso: str, limit: int) -> int:
    """Delete at most `limit` finished jobs (``done``, ``failed``, ``superseded``) that ended
    before `cutoff_iso`, the longest finished first; how many. An open job (``queued``,
    ``sent``) is never deleted, however old (index ``jobs_finished``)."""
    batch_limit(limit)
    cur = await conn.execute(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ? "
        "AND state IN ('done', 'failed', 'superseded') ORDER BY finished_at LIMIT ?)", (cutoff_iso, limit))
    return cur
