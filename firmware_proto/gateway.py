"""The gateway side of one label, sans-IO: build authenticated frames, verify what comes back.

A `GatewaySession` holds what the gateway (or server) knows about one label: its address, its
key, and both counters. The owner persists ``tx_counter`` and ``rx`` with the label record; if
they are lost, the label's next authenticated check-in carries the highest counter it accepted
and `open` moves ``tx_counter`` above it, so a label is never locked out by a gateway restart.
"""

from __future__ import annotations

import os
from dataclasses import replace

from firmware_proto.auth import Direction, FrameKey, ReplayWindow, new_label_key, seal, verify, wrap_key
from firmware_proto.errors import AuthError
from firmware_proto.frames import (
    DEFAULT_MTU, Checkin, ControlCommand, Frame, PairRequest, address_bytes, parse_frame,
)
from firmware_proto.image import ImageFormat, Region
from firmware_proto.transfer import ImageSender, ImageUpdate

__all__ = ["GatewaySession", "SealedSender"]


class GatewaySession:
    """Per-label gateway state. ``addressed=True`` puts the label address in every frame sent."""

    def __init__(self, address: str | bytes, key: bytes | None = None, *, tx_counter: int = 0,
                 rx: ReplayWindow | None = None, factory_tx_counter: int = 0,
                 addressed: bool = False) -> None:
        self.address = address_bytes(address)
        self._key = None if key is None else FrameKey(key)
        self.tx_counter = tx_counter
        self.rx = rx if rx is not None else ReplayWindow()
        self.factory_tx_counter = factory_tx_counter
        self.addressed = addressed
        self._seq = 0
        self._transfer_id = os.urandom(1)[0]

    @property
    def key(self) -> bytes | None:
        return None if self._key is None else self._key.key

    @property
    def paired(self) -> bool:
        return self._key is not None

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    # -- sending ------------------------------------------------------------------------------
    def seal(self, frame: Frame) -> bytes:
        """`frame` authenticated under the label key with the next counter."""
        if self._key is None:
            raise AuthError("label is not paired: no key to authenticate with")
        if self.addressed and frame.address is None:
            frame = _with_address(frame, self.address)
        self.tx_counter += 1
        return seal(frame, self._key, self.address, Direction.TO_LABEL, self.tx_counter)

    def command(self, name: str, *, esl_id: int = 0, **params: int) -> bytes:
        """An authenticated ESL control-point command by table name (see `commands`)."""
        return self.seal(ControlCommand.make(name, seq=self.next_seq(), esl_id=esl_id, **params))

    def pair(self, factory_key: bytes, new_key: bytes | None = None, *, esl_id: int = 0,
             label_rx_counter: int = 0) -> bytes:
        """The pairing frame: `new_key` (random if None) wrapped under the label's factory key.

        ``label_rx_counter`` is the ``rx_counter`` from the label's unauthenticated check-in
        (pairing counters under the factory key never restart). The session switches to the
        new key at once; the label confirms with a check-in authenticated under it.
        """
        key = new_key if new_key is not None else new_label_key()
        counter = max(self.factory_tx_counter, label_rx_counter) + 1
        self.factory_tx_counter = counter
        frame = PairRequest(wrapped_key=wrap_key(factory_key, self.address, counter, key),
                            esl_id=esl_id, seq=self.next_seq(),
                            address=self.address if self.addressed else None)
        out = seal(frame, FrameKey(factory_key), self.address, Direction.TO_LABEL, counter)
        self._key, self.tx_counter, self.rx = FrameKey(key), 0, ReplayWindow()
        return out

    def send_image(self, payload: bytes, image_format: ImageFormat | int, image_hash: bytes, *,
                   region: Region | None = None, base_hash: bytes | None = None,
                   max_frame: int = DEFAULT_MTU, window: int = 128, max_timeouts: int = 8,
                   resume: bool = False, delta: bool = False) -> SealedSender:
        """An image transfer to this label whose frames come out sealed.

        Pass ``resume=True`` when the label's check-in has TRANSFER_PENDING (it holds parts of
        an unfinished transfer): the offer goes alone and only missing parts follow.
        """
        self._transfer_id = (self._transfer_id + 1) & 0xFF
        sender = ImageSender(payload, image_format, image_hash, transfer_id=self._transfer_id,
                             max_frame=max_frame - (6 if self.addressed else 0), region=region,
                             base_hash=base_hash, window=window, max_timeouts=max_timeouts,
                             first_seq=self.next_seq(), resume=resume, delta=delta)
        return SealedSender(self, sender)

    def send_update(self, update: ImageUpdate, *, max_frame: int = DEFAULT_MTU, window: int = 128,
                    max_timeouts: int = 8, resume: bool = False) -> SealedSender:
        """`send_image` for an `ImageUpdate` from `plan_update`."""
        return self.send_image(update.payload, update.image_format, update.image_hash,
                               region=update.region, base_hash=update.base_hash, delta=update.delta,
                               max_frame=max_frame, window=window, max_timeouts=max_timeouts,
                               resume=resume)

    # -- receiving ----------------------------------------------------------------------------
    def open(self, data: bytes) -> Frame:
        """Parse and verify a frame from the label. `ProtocolError` (`AuthError`) if refused.

        Unauthenticated frames pass only if they are check-ins (an unpaired label's report,
        which changes nothing); the caller sees that from ``frame.auth is None``.
        """
        frame = parse_frame(data)
        if frame.address is not None and frame.address != self.address:
            raise AuthError(f"address: expected {self.address.hex()}, got {frame.address.hex()}")
        if frame.auth is None:
            if isinstance(frame, Checkin):
                return frame
            raise AuthError(f"{type(frame).__name__}: not authenticated")
        if self._key is None:
            raise AuthError(f"{type(frame).__name__}: authenticated, but no key for this label")
        self.rx.check(frame.auth.counter)
        verify(frame, self._key, self.address, Direction.FROM_LABEL)
        self.rx.accept(frame.auth.counter)
        if isinstance(frame, Checkin) and frame.rx_counter > self.tx_counter:
            self.tx_counter = frame.rx_counter  # we lost state; continue above the label
        return frame


class SealedSender:
    """`ImageSender` whose frames come out as bytes sealed by a `GatewaySession`."""

    def __init__(self, session: GatewaySession, sender: ImageSender) -> None:
        self.session = session
        self.sender = sender

    def _seal(self, frames: list[Frame]) -> list[bytes]:
        return [self.session.seal(f) for f in frames]

    def start(self) -> list[bytes]:
        return self._seal(self.sender.start())

    def handle(self, frame: Frame | bytes) -> list[bytes]:
        """Feed a frame from the label (a `Frame` from `GatewaySession.open`, or raw bytes)."""
        if isinstance(frame, bytes):
            frame = self.session.open(frame)
        return self._seal(self.sender.handle(frame))

    def on_timeout(self) -> list[bytes]:
        return self._seal(self.sender.on_timeout())

    @property
    def done(self) -> bool:
        return self.sender.done

    @property
    def failed(self) -> bool:
        return self.sender.failed

    @property
    def finished(self) -> bool:
        return self.sender.finished

    @property
    def error(self) -> str | None:
        return self.sender.error

    @property
    def outstanding(self) -> set[int]:
        return self.sender.outstanding


def _with_address(frame: Frame, address: bytes) -> Frame:
    return replace(frame, address=address)
