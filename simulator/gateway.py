"""A minimal simulated gateway: pair a label and push an image over any `Link`.

This is the gateway's half of a conversation as tests and benchmarks need it — the real
gateway (``eslserver.gateway``) adds jobs, MQTT and persistence. It only uses the public
gateway side of `firmware_proto` (`GatewaySession`, its sealed `ImageSender`) and the `Link`
interface, so it drives an in-memory link, the loopback TCP radio and BLE alike.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from firmware_proto.errors import ProtocolError
from firmware_proto.frames import Checkin, CheckinFlag, Frame
from firmware_proto.gateway import GatewaySession
from firmware_proto.image import Region, image_hash
from firmware_proto.link import Link, Radio
from firmware_proto.transfer import TransferResult, best_payload

__all__ = [
    "GatewayError", "TransferOutcome", "Conversation", "Target", "pair_label", "push_image", "converge",
]

log = logging.getLogger(__name__)


class GatewayError(ConnectionError):
    """The label did not answer in time (after every retry)."""


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """How an image push ended. ``done``: the label verified the hash and displays it."""

    done: bool
    error: str | None
    error_code: int
    attempts: int
    frames_sent: int
    timeouts: int


class Conversation:
    """A link plus a queue of the frames that came back on it."""

    def __init__(self, link: Link, session: GatewaySession) -> None:
        self.link = link
        self.session = session
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.frames_sent = 0
        self.bad_frames = 0
        link.set_frame_callback(self.queue.put_nowait)

    async def send_all(self, frames: list[bytes]) -> None:
        for frame in frames:
            self.frames_sent += 1
            await self.link.send(frame)

    async def next_frame(self, timeout_s: float) -> Frame | None:
        """The next frame that opens (verifies) under the session; None on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                data = await asyncio.wait_for(self.queue.get(), remaining)
            except TimeoutError:
                return None
            try:
                return self.session.open(data)
            except ProtocolError as exc:
                self.bad_frames += 1
                log.debug("dropped a frame from %s: %s", self.link.address, exc)


async def pair_label(conv: Conversation, factory_key: bytes, new_key: bytes, *,
                     label_rx_counter: int = 0, timeout_s: float = 0.25, attempts: int = 40) -> Checkin:
    """Give the label `new_key`; return its check-in authenticated under it."""
    for _ in range(attempts):
        await conv.send_all([conv.session.pair(factory_key, new_key, label_rx_counter=label_rx_counter)])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (remaining := deadline - loop.time()) > 0:
            frame = await conv.next_frame(remaining)
            if isinstance(frame, Checkin) and frame.auth is not None and frame.status_flags & CheckinFlag.PAIRED:
                return frame
    raise GatewayError(f"label {conv.link.address} did not confirm pairing after {attempts} tries")


async def push_image(conv: Conversation, framebuffer: bytes, *, region: Region | None = None,
                     base_hash: bytes | None = None, full_hash: bytes | None = None,
                     payload: bytes | None = None, timeout_s: float = 0.25,
                     attempts: int = 10) -> TransferOutcome:
    """Send an image (or, with `region`, the region's pixels) until the label displays it.

    `framebuffer` is the packed whole-screen result; for a region update pass the region's
    packed pixels as `payload` and the label's current hash as `base_hash`. A transfer that
    gives up (label silent) is retried with a new offer, which resumes where the label is.
    """
    target = full_hash if full_hash is not None else image_hash(framebuffer)
    data, fmt = best_payload(payload if payload is not None else framebuffer)
    timeouts = 0
    for attempt in range(1, attempts + 1):
        # a retry resumes: the label kept the parts it got, so the offer goes alone first
        sender = conv.session.send_image(data, fmt, target, region=region, base_hash=base_hash,
                                         max_frame=conv.link.max_frame, resume=attempt > 1)
        await conv.send_all(sender.start())
        while not sender.finished:
            frame = await conv.next_frame(timeout_s)
            if frame is None:
                timeouts += 1
                out = sender.on_timeout()
            else:
                out = sender.handle(frame)
            await conv.send_all(out)
        if sender.done:
            return TransferOutcome(True, None, 0, attempt, conv.frames_sent, timeouts)
        code = sender.sender.error_code
        if code != TransferResult.TOO_MANY_ROUNDS:  # the label refused: retrying will not help
            return TransferOutcome(False, sender.error, code, attempt, conv.frames_sent, timeouts)
    return TransferOutcome(False, "label did not finish", 0, attempts, conv.frames_sent, timeouts)


@dataclass(frozen=True, slots=True)
class Target:
    """What the gateway wants a label to show, and how to pair it."""

    factory_key: bytes
    label_key: bytes
    framebuffer: bytes


async def converge(radio: Radio, targets: dict[str, Target], *, concurrency: int = 200,
                   timeout_s: float = 0.25, attempts: int = 10,
                   connect_retry_s: float = 0.05, connect_attempts: int = 100) -> dict[str, TransferOutcome]:
    """Pair every label in `targets` and push its image, `concurrency` conversations at a time.

    Returns each label's outcome. A label that does not answer a connect (asleep, off the air)
    is retried every ``connect_retry_s``, as a gateway would on the label's next check-in.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency!r}")
    gate = asyncio.Semaphore(concurrency)
    results: dict[str, TransferOutcome] = {}

    async def one(address: str, target: Target) -> None:
        async with gate:
            link = await radio.open_link(address)
            try:
                for _ in range(connect_attempts):
                    try:
                        await link.connect()
                        break
                    except ConnectionError:
                        await asyncio.sleep(connect_retry_s)
                else:
                    results[address] = TransferOutcome(False, "never reachable", 0, 0, 0, 0)
                    return
                conv = Conversation(link, GatewaySession(address))
                await pair_label(conv, target.factory_key, target.label_key, timeout_s=timeout_s)
                results[address] = await push_image(conv, target.framebuffer, timeout_s=timeout_s,
                                                    attempts=attempts)
            except GatewayError as exc:
                results[address] = TransferOutcome(False, str(exc), 0, 0, 0, 0)
            finally:
                await link.close()

    async with asyncio.TaskGroup() as group:
        for address, target in targets.items():
            group.create_task(one(address, target), name=f"converge-{address}")
    return results
