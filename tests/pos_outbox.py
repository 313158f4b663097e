"""A POS with an outbox, as docs/operations.md tells integrators to write one (tests and benchmarks).

A broker's PUBACK only says the broker has a message; the server confirms each accepted item
on ``esl/{store}/pos/acks`` after its commit. So this POS gives every item an ``update_id``,
keeps it until a confirmation names that id, and publishes again whatever stays unconfirmed
for too long (the server recognises the second copy: ``duplicate`` or ``stale``, never
applied twice).

    async with OutboxPos(broker_url, topics, client_id="till-1") as pos:
        await pos.publish([{"sku": "A1", "price": "2.99", "seq": 7, "update_id": "till1-7"}])
        await pos.until_confirmed(["till1-7"], timeout=10, resend_after=3)
        pos.status("till1-7")            # "applied" (the first confirmation's status)

Every confirmation and every ``pos/errors`` message is kept (`acks`, `errors`) with the time
it arrived (``time.time()``), so that a test or a benchmark can check what happened to each
update: confirmed once or more, with which status, rejected, or never heard of again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from eslserver.mqtt import Message, MqttConnection, MqttSettings
from eslserver.topics import Topics

__all__ = ["Confirmation", "OutboxPos", "Sent"]


@dataclass
class Sent:
    """One item of the outbox: what was published, when, how often."""

    item: dict[str, Any]
    first_sent: float
    last_sent: float
    sends: int = 1


@dataclass(frozen=True)
class Confirmation:
    """One accepted item of a ``pos/acks`` message."""

    update_id: str | None
    sku: str | None
    seq: int | None
    status: str
    at: float


@dataclass
class OutboxPos:
    """The POS side: publish items (each with an ``update_id``), collect confirmations and errors."""

    url: str
    topics: Topics
    client_id: str = "test-pos-outbox"
    clean_session: bool = False
    outbox: dict[str, Sent] = field(default_factory=dict)
    """update_id → the item as published (kept after it is confirmed, for the final checks)."""
    confirmations: dict[str, list[Confirmation]] = field(default_factory=dict)
    acks: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    errors: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _conn: MqttConnection | None = None

    async def __aenter__(self) -> Self:
        conn = MqttConnection(MqttSettings.from_url(self.url), client_id=self.client_id,
                              clean_session=self.clean_session)
        conn.subscribe(self.topics.pos_acks, self._on_ack, qos=1)
        conn.subscribe(self.topics.pos_errors, self._on_error, qos=1)
        self._conn = await conn.__aenter__()
        try:
            async with asyncio.timeout(30):
                await conn.connected.wait()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.aclose()

    @property
    def conn(self) -> MqttConnection:
        assert self._conn is not None, "enter the OutboxPos first"
        return self._conn

    async def _on_ack(self, message: Message) -> None:
        now = time.time()
        body = json.loads(message.payload)
        self.acks.append((now, body))
        for item in body.get("accepted", []):
            conf = Confirmation(item.get("update_id"), item.get("sku"), item.get("seq"), item["status"], now)
            if conf.update_id is not None:
                self.confirmations.setdefault(conf.update_id, []).append(conf)

    async def _on_error(self, message: Message) -> None:
        try:
            body: dict[str, Any] = json.loads(message.payload)
        except ValueError:
            body = {"unreadable": message.payload[:200].decode(errors="replace")}
        self.errors.append((time.time(), body))

    # -- publishing ---------------------------------------------------------------------------------

    async def publish(self, items: Iterable[Mapping[str, Any]], *, timeout: float | None = 60) -> None:
        """One message (a batch) of `items`, each with an ``update_id``; recorded in the outbox."""
        batch = [dict(item) for item in items]
        now = time.time()
        for item in batch:
            uid = item["update_id"]
            sent = self.outbox.get(uid)
            if sent is None:
                self.outbox[uid] = Sent(item, now, now)
            else:
                sent.last_sent, sent.sends = now, sent.sends + 1
        await self.conn.publish(self.topics.pos_prices, json.dumps(batch).encode(), qos=1, timeout=timeout)

    async def publish_raw(self, payload: bytes, *, timeout: float | None = 60) -> None:
        """Bytes as they are (not recorded in the outbox): garbage, oversized messages."""
        await self.conn.publish(self.topics.pos_prices, payload, qos=1, timeout=timeout)

    def status(self, update_id: str) -> str | None:
        """The status of the first confirmation naming `update_id` (None: not confirmed)."""
        got = self.confirmations.get(update_id)
        return got[0].status if got else None

    def unconfirmed(self, older_than_s: float = 0.0) -> list[Sent]:
        """Outbox items with no confirmation whose last send is at least `older_than_s` old."""
        limit = time.time() - older_than_s
        return [s for uid, s in self.outbox.items() if uid not in self.confirmations and s.last_sent <= limit]

    async def resend_unconfirmed(self, older_than_s: float, *, batch: int = 50) -> int:
        """Publish again what stayed unconfirmed for `older_than_s`, in the order first sent; how many."""
        todo = sorted(self.unconfirmed(older_than_s), key=lambda s: s.first_sent)
        for i in range(0, len(todo), batch):
            await self.publish([s.item for s in todo[i:i + batch]])
        return len(todo)

    async def until_confirmed(self, update_ids: Iterable[str], *, timeout: float,
                              resend_after: float | None = None) -> int:
        """Wait until every id in `update_ids` is confirmed, re-sending what stays unconfirmed for
        `resend_after` seconds (None: never); the number of re-sent items. AssertionError after
        `timeout` naming what is missing.

        The re-send clock starts at the later of an item's last send and the start of this wait:
        a POS that was itself waiting (for the broker, for its server to be back) does not count
        that time as the server's."""
        wanted = set(update_ids)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        started = time.time()
        resent = 0
        while missing := wanted - set(self.confirmations):
            if loop.time() > deadline:
                raise AssertionError(f"{len(missing)} updates not confirmed within {timeout} s: {sorted(missing)[:20]}"
                                     f"; errors: {[e for _, e in self.errors][-5:]}")
            if resend_after is not None:
                limit = time.time() - resend_after
                late = [self.outbox[uid] for uid in sorted(missing)
                        if max(self.outbox[uid].last_sent, started) <= limit]
                if late:
                    await self.publish([s.item for s in late])
                    resent += len(late)
            await asyncio.sleep(0.05)
        return resent
