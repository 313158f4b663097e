"""Frame authentication: AES-CCM tags, per-direction counters, replay window, key wrapping.

Choices, and why:

- **AES-CCM, authenticate-only, 4-byte tag.** Labels have an AES-128 block in hardware and CCM is
  what BLE and 802.15.4 already use. Frames are not encrypted (a price is public; the body stays
  readable by `parse_frame` and sniffers). A 32-bit tag gives a forger one chance in 4·10⁹ per
  try; a label hears at most a few hundred frames a second and only in its short wake windows,
  and a failed tag changes nothing on the label, so brute force takes centuries of airtime.
  BLE's link layer uses the same 4-byte MIC. The key wrap at pairing, done once, uses 8 bytes.
- **Nonce** = label address (6) ‖ direction (1) ‖ counter (u32 LE) ‖ 00 00. Address and direction
  make nonces distinct across labels and directions even under one key; the counter makes them
  distinct in time. A sender never reuses a counter under one key (see `LabelFlash`).
- **Counters**: each direction has its own u32 counter, starting at 1 with a new key. The receiver
  keeps a 64-frame anti-replay window (as IPsec does): it accepts a counter above the highest seen,
  or one up to 63 below it not yet seen (links may reorder), and refuses anything else.
- **Factory key**: each label leaves the factory with its own AES key, known to the store from the
  manufacturer's label list. The simulator derives it as HMAC-SHA256(seed, "esl factory key" ‖
  MAC)[:16] (`derive_factory_key`). Pairing sends the new label key wrapped (AES-CCM encrypted
  and authenticated, 8-byte tag) under the factory key; the label proves it has the key by
  answering with a check-in authenticated under it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESCCM

from firmware_proto.errors import AuthError
from firmware_proto.frames import ADDRESS_SIZE, TAG_SIZE, Auth, Frame, address_bytes
from firmware_proto.wire import U32, check_range, hexs

__all__ = [
    "KEY_SIZE", "REPLAY_WINDOW", "Direction", "FrameKey", "ReplayWindow", "derive_factory_key",
    "new_label_key", "make_nonce", "seal", "verify", "wrap_key", "unwrap_key",
]

KEY_SIZE = 16
REPLAY_WINDOW = 64
_WRAP_TAG = 8


class Direction(IntEnum):
    TO_LABEL = 0
    FROM_LABEL = 1
    KEY_WRAP = 2


def derive_factory_key(seed: bytes, address: str | bytes) -> bytes:
    """A label's factory key as the simulator (and tests) make it: HMAC-SHA256 of its MAC."""
    return hmac.new(seed, b"esl factory key" + address_bytes(address), hashlib.sha256).digest()[:KEY_SIZE]


def new_label_key() -> bytes:
    """A fresh random label key for pairing."""
    return os.urandom(KEY_SIZE)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_SIZE:  # never quote a key, even a wrong one
        got = f"{len(key)} bytes" if isinstance(key, bytes) else type(key).__name__
        raise AuthError(f"key must be {KEY_SIZE} bytes, got {got}")
    return key


def make_nonce(address: bytes, direction: Direction, counter: int) -> bytes:
    check_range("counter", U32, counter)
    if len(address) != ADDRESS_SIZE:
        raise AuthError(f"address must be {ADDRESS_SIZE} bytes, got {hexs(address)}")
    return address + bytes((int(direction),)) + U32(counter).serialize() + b"\x00\x00"


class FrameKey:
    """One AES-128 key, expanded on first use (so 10,000 idle simulated labels cost little)."""

    __slots__ = ("key", "_ccm")

    def __init__(self, key: bytes) -> None:
        self.key = _check_key(key)
        self._ccm: AESCCM | None = None

    def tag(self, nonce: bytes, aad: bytes) -> bytes:
        if self._ccm is None:
            self._ccm = AESCCM(self.key, tag_length=TAG_SIZE)
        return self._ccm.encrypt(nonce, b"", aad)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FrameKey) and hmac.compare_digest(self.key, other.key)

    def __hash__(self) -> int:
        return hash(self.key)


def seal(frame: Frame, key: FrameKey, address: bytes, direction: Direction, counter: int) -> bytes:
    """`frame` with counter and AES-CCM tag added, as bytes."""
    placeholder = frame.with_auth(Auth(counter, b"\x00" * TAG_SIZE))
    tag = key.tag(make_nonce(address, direction, counter), placeholder.mac_input())
    return frame.with_auth(Auth(counter, tag)).to_bytes()


def verify(frame: Frame, key: FrameKey, address: bytes, direction: Direction) -> int:
    """Check `frame`'s tag; return its counter. `AuthError` if unauthenticated or forged."""
    if frame.auth is None:
        raise AuthError(f"{type(frame).__name__}: not authenticated")
    want = key.tag(make_nonce(address, direction, frame.auth.counter), frame.mac_input())
    if not hmac.compare_digest(want, frame.auth.tag):
        # neither tag is quoted: the expected one would let whoever reads the error forge this frame
        raise AuthError(f"{type(frame).__name__}: authentication tag does not match "
                        f"(counter {frame.auth.counter}; forged, corrupted or wrong key)")
    return frame.auth.counter


@dataclass(slots=True)
class ReplayWindow:
    """Anti-replay state for one direction under one key: highest counter and a 64-bit mask."""

    highest: int = 0
    mask: int = 0  # bit i set: counter highest - i seen

    def check(self, counter: int) -> None:
        """`AuthError` unless `counter` is new; does not record it (do that after the MAC)."""
        if counter == 0:
            raise AuthError("counter: 0 is never used")
        if counter > self.highest:
            return
        age = self.highest - counter
        if age >= REPLAY_WINDOW:
            raise AuthError(f"counter: {counter} is older than the window (highest {self.highest}): replay")
        if self.mask >> age & 1:
            raise AuthError(f"counter: {counter} already used (highest {self.highest}): replay")

    def accept(self, counter: int) -> None:
        self.check(counter)
        if counter > self.highest:
            shift = counter - self.highest
            self.mask = ((self.mask << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            self.highest = counter
        else:
            self.mask |= 1 << (self.highest - counter)


def wrap_key(factory_key: bytes, address: bytes, counter: int, new_key: bytes) -> bytes:
    """`new_key` encrypted and authenticated under `factory_key` (24 bytes)."""
    ccm = AESCCM(_check_key(factory_key), tag_length=_WRAP_TAG)
    return ccm.encrypt(make_nonce(address, Direction.KEY_WRAP, counter), _check_key(new_key), b"esl-pair")


def unwrap_key(factory_key: bytes, address: bytes, counter: int, wrapped: bytes) -> bytes:
    """The label key from `wrap_key`'s output; `AuthError` if it does not authenticate."""
    ccm = AESCCM(_check_key(factory_key), tag_length=_WRAP_TAG)
    try:
        return ccm.decrypt(make_nonce(address, Direction.KEY_WRAP, counter), wrapped, b"esl-pair")
    except InvalidTag:
        raise AuthError(f"wrapped key ({len(wrapped)} bytes) does not authenticate under the factory key") from None
