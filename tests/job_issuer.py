"""The server's side of a job, for tests that stand in for the server: it alone holds the label
keys and the factory keys, reserves counter ranges, builds pair requests and tickets, seals
job keys to one gateway and signs envelopes.

    issuer = Issuer(store="s1", gateway="gw1", gateway_key=gw.key.public)
    envelope = issuer.image(update, job_id=7, mac=MAC, label_key=KEY)   # reserves its counters
    data = issuer.sign(envelope)
    issuer.heard(ack)                                                    # the label's counter, as the server keeps it

It mirrors what `eslserver.dispatch` does with the database, without one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from eslserver.gateway.events import Ack, Nack
from firmware_proto.auth import Direction, FrameKey, seal, wrap_key
from firmware_proto.envelope import CommandJob, ImageJob, JobEnvelope, PairJob, credentials
from firmware_proto.frames import Checkin, JobStatus, PairRequest, address_bytes, parse_frame
from firmware_proto.transfer import ImageUpdate
from firmware_proto.trust import SigningKey

__all__ = ["Issuer", "now_ms"]


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Label:
    tx: int = 0        # the last counter reserved under the label key
    rx: int = 0        # the highest counter heard from the label (verified by the caller's trust)
    factory: int = 0   # the highest factory-key counter used


@dataclass
class Issuer:
    """Builds signed envelopes for one gateway, keeping each label's counters."""

    store: str
    gateway: str
    gateway_key: bytes
    signer: SigningKey = field(default_factory=SigningKey.generate)
    deadline_s: int = 10
    labels: dict[str, _Label] = field(default_factory=dict)

    def _label(self, mac: str) -> _Label:
        return self.labels.setdefault(mac.upper(), _Label())

    def _common(self, job_id: int, mac: str, attempt: int, deadline_s: int | None,
                issued_ms: int | None) -> dict[str, Any]:
        return {"job_id": job_id, "mac": mac, "attempt": attempt, "store": self.store, "gateway": self.gateway,
                "issued_ms": now_ms() if issued_ms is None else issued_ms,
                "deadline_s": self.deadline_s if deadline_s is None else deadline_s}

    def pair(self, *, job_id: int, mac: str, factory_key: bytes, new_key: bytes, counter: int | None = None,
             attempt: int = 0, deadline_s: int | None = None, issued_ms: int | None = None) -> PairJob:
        """A pairing; the factory-key counter goes above the last one used (or is `counter`)."""
        label = self._label(mac)
        label.factory = counter if counter is not None else label.factory + 1
        address = address_bytes(mac)
        frame = PairRequest(wrapped_key=wrap_key(factory_key, address, label.factory, new_key))
        raw = seal(frame, FrameKey(factory_key), address, Direction.TO_LABEL, label.factory)
        return PairJob(pair_request=raw, **self._common(job_id, mac, attempt, deadline_s, issued_ms))

    def _keys(self, *, job_id: int, mac: str, label_key: bytes, budget: int, attempt: int) -> dict[str, Any]:
        label = self._label(mac)
        first, label.tx = label.tx + 1, label.tx + budget  # reserved now, used or not
        return {"rx_highest": label.rx,
                **credentials(label_key=label_key, gateway_key=self.gateway_key, job_id=job_id, attempt=attempt,
                              mac=mac, store=self.store, gateway=self.gateway, first=first, last=label.tx)}

    def image(self, update: ImageUpdate, *, job_id: int, mac: str, label_key: bytes, budget: int = 500,
              attempt: int = 0, deadline_s: int | None = None, issued_ms: int | None = None) -> ImageJob:
        return ImageJob.from_update(update, **self._keys(job_id=job_id, mac=mac, label_key=label_key,
                                                         budget=budget, attempt=attempt),
                                    **self._common(job_id, mac, attempt, deadline_s, issued_ms))

    def command(self, name: str, *, job_id: int, mac: str, label_key: bytes, budget: int = 20, attempt: int = 0,
                deadline_s: int | None = None, issued_ms: int | None = None, **params: int) -> CommandJob:
        return CommandJob.make(name, **self._keys(job_id=job_id, mac=mac, label_key=label_key, budget=budget,
                                                  attempt=attempt),
                               **self._common(job_id, mac, attempt, deadline_s, issued_ms), **params)

    def sign(self, job: JobEnvelope) -> bytes:
        return job.to_bytes(self.signer)

    def heard(self, result: Ack | Nack) -> JobStatus | Checkin | None:
        """The label's final word in `result`, parsed (not verified: tests that need that do it),
        and the counters it moves: a pairing's check-in starts both counters again."""
        if result.status is None:
            return None
        frame = parse_frame(result.status)
        assert isinstance(frame, (JobStatus, Checkin)) and frame.auth is not None, frame
        label = self._label(result.mac)
        if isinstance(frame, Checkin):
            label.tx, label.rx = frame.rx_counter, frame.auth.counter
        else:
            label.rx = max(label.rx, frame.auth.counter)
        return frame
