"""Image transfer as two sans-IO state machines: `ImageSender` (gateway) and `ImageReceiver` (label).

The payload (a compressed framebuffer or region, see `image`) is cut into parts as large as the
link allows (one part per frame: 225 payload bytes in a 244-byte BLE frame). The sender streams a
window of parts and asks for a status on the last one (the ACK_REQ header flag, no extra frame);
the label answers with a bitmap of the parts it still misses, and only those are sent again
(selective repeat). There is no per-part ack and no block structure, so a lost part costs one
part, not a block. A lost status or lost ACK_REQ part shows as a timeout: the sender asks for the
status (`ImageStatusRequest`) and carries on where the label is.

The offer and the first window go out back to back (no round trip before data). If the offer is
lost, the label holds the parts that came without it (bounded by its image buffer) and adopts
them when the sender, told "no such transfer", offers again.

Resume, never restart: the receiver lives in the label's flash (`LabelFlash.transfer`), so a label
reboot keeps the parts it has; an offer for the same image (same hash, format, size, region) is
recognised even with a new transfer id (a restarted gateway), and only missing parts flow.

Bitmap convention (`ImageStatus`): parts before ``base`` have arrived; bit i is part base+i,
set = missing; every part after the bitmap's end is missing too. So "nothing yet" is an empty
bitmap, and the label trims trailing all-missing bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

from firmware_proto.commands import EslError
from firmware_proto.errors import TransferError
from firmware_proto.frames import (
    AUTH_SIZE, CRC_SIZE, HEADER_SIZE, DEFAULT_MTU, MAX_FRAME, Frame, ImageOffer, ImagePart,
    ImageStatus, ImageStatusRequest, TransferState,
)
from firmware_proto.image import (
    HASH_SIZE, ImageError, ImageFormat, Region, apply_region, best_payload, decompress,
    extract_region, image_hash, row_stride,
)
from firmware_proto.models import LabelModel

__all__ = [
    "TransferResult", "PART_OVERHEAD", "STATUS_OVERHEAD", "part_size_for", "ImageReceiver",
    "ImageSender", "encode_missing", "framebuffer_size",
    "best_payload", "changed_region", "xor_bytes", "ImageUpdate", "plan_update",
]

PART_OVERHEAD = HEADER_SIZE + 1 + 3 + 2 + AUTH_SIZE + CRC_SIZE
"""Bytes of an authenticated `ImagePart` frame that are not payload (19)."""
STATUS_OVERHEAD = HEADER_SIZE + 5 + AUTH_SIZE + CRC_SIZE
"""Bytes of an authenticated `ImageStatus` frame besides its bitmap (18)."""
MAX_PARTS = 0xFFFF


def framebuffer_size(model: LabelModel) -> int:
    """Bytes of the packed framebuffer (rows padded to whole bytes, see `image.row_stride`):
    the label's image buffer, so also the largest payload it accepts."""
    return model.max_image_bytes


class TransferResult(IntEnum):
    """Why a transfer failed: ESL error codes plus our vendor-specific ones (0xF0..)."""

    INVALID_PARAMETERS = EslError.INVALID_PARAMETERS
    CAPACITY_LIMIT = EslError.CAPACITY_LIMIT
    INSUFFICIENT_BATTERY = EslError.INSUFFICIENT_BATTERY
    HASH_MISMATCH = 0xF0
    BASE_MISMATCH = 0xF1      # an update built on an image the label does not show
    DECODE_FAILED = 0xF2
    TOO_MANY_ROUNDS = 0xF3    # sender side only: gave up


def part_size_for(max_frame: int, *, authenticated: bool = True) -> int:
    """Payload bytes per part when each `ImagePart` frame fills `max_frame` bytes."""
    overhead = PART_OVERHEAD - (0 if authenticated else AUTH_SIZE)
    if not overhead < max_frame <= MAX_FRAME:
        raise TransferError(f"max_frame must be in {overhead + 1}..{MAX_FRAME}, got {max_frame}")
    return max_frame - overhead


def encode_missing(missing: list[bool], max_bytes: int) -> tuple[int, bytes]:
    """(base, bitmap) for a per-part "missing" list, in the `ImageStatus` convention."""
    try:
        base = missing.index(True)
    except ValueError:
        return len(missing), b""
    nbits = len(missing) - base
    out = bytearray((nbits + 7) // 8)
    for i in range(nbits):
        if missing[base + i]:
            out[i >> 3] |= 1 << (i & 7)
    if nbits % 8:
        out[-1] |= 0xFF << (nbits % 8) & 0xFF  # past the end counts as missing, so it trims
    while out and out[-1] == 0xFF:
        out.pop()
    return base, bytes(out[:max(0, max_bytes)])


@dataclass(frozen=True, slots=True)
class _Plan:
    """What an offer promises, reduced to what decides whether two offers are one image."""

    image_format: int
    image_hash: bytes
    total_size: int
    part_size: int
    region: tuple[int, int, int, int] | None
    base_hash: bytes | None
    delta: bool

    @classmethod
    def of(cls, offer: ImageOffer) -> _Plan:
        return cls(offer.image_format, offer.image_hash, offer.total_size, offer.part_size,
                   offer.region, offer.base_hash, offer.delta)


def changed_region(old: bytes, new: bytes, model: LabelModel) -> Region | None:
    """The smallest byte-aligned region holding every byte that differs (None if none does).

    The server uses it to send a price-only change as a region update. numpy is imported here,
    not with the module: a gateway never calls this and installs without numpy.
    """
    import numpy as np

    size = framebuffer_size(model)
    if len(old) != size or len(new) != size:
        raise TransferError(f"framebuffers must both be {size} bytes, got {len(old)} and {len(new)}")
    stride = row_stride(model)
    diff = (np.frombuffer(old, dtype=np.uint8) != np.frombuffer(new, dtype=np.uint8)).reshape(-1, stride)
    rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
    if rows.size == 0:
        return None
    ppb = 8 // model.bits_per_pixel
    x0, x1 = int(cols[0]) * ppb, min((int(cols[-1]) + 1) * ppb, model.panel_size[0])
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    return Region(x0, y0, x1 - x0, y1 - y0)


class ImageReceiver:
    """Label side of one transfer: collects parts, then checks and yields the new framebuffer.

    Memory is bounded: the offer is refused (`TransferError` with a `TransferResult`) when its
    payload exceeds the model's ``max_image_bytes``; the buffer is exactly ``total_size``. Parts
    may come in any order; duplicates are ignored; a part whose CRC, offset or length is wrong
    is refused. Nothing reaches the panel until `finish` has checked the whole result's hash.
    """

    __slots__ = ("model", "offer", "plan", "_buf", "_missing", "_left")

    def __init__(self, model: LabelModel, offer: ImageOffer) -> None:
        self.model = model
        self.offer = offer
        self.plan = _Plan.of(offer)
        if offer.total_size > framebuffer_size(model):
            raise TransferError(
                f"image_offer.total_size: {offer.total_size} bytes is over {model.name}'s "
                f"{framebuffer_size(model)}-byte image buffer", TransferResult.CAPACITY_LIMIT)
        try:
            ImageFormat(offer.image_format)
        except ValueError:
            raise TransferError(f"image_offer.image_format: unknown format {offer.image_format}",
                                TransferResult.INVALID_PARAMETERS) from None
        if offer.part_count > MAX_PARTS:
            raise TransferError(f"image_offer: {offer.part_count} parts is over {MAX_PARTS}",
                                TransferResult.INVALID_PARAMETERS)
        if offer.region is not None:
            try:
                Region(*offer.region).check(model)
            except ImageError as exc:
                raise TransferError(f"image_offer.region: {exc}", TransferResult.INVALID_PARAMETERS) from None
        self._buf = bytearray(offer.total_size)
        self._missing = [True] * offer.part_count
        self._left = offer.part_count

    @property
    def transfer_id(self) -> int:
        return self.offer.transfer_id

    def same_image(self, offer: ImageOffer) -> bool:
        """True when `offer` describes the image this receiver is collecting (resume)."""
        return _Plan.of(offer) == self.plan

    def adopt(self, offer: ImageOffer) -> None:
        """Continue under `offer`'s transfer id (a restarted gateway re-offering the same image)."""
        if not self.same_image(offer):
            raise TransferError("adopt: offer is for a different image")
        self.offer = offer

    @property
    def complete(self) -> bool:
        return self._left == 0

    @property
    def missing_count(self) -> int:
        return self._left

    def missing_parts(self) -> list[int]:
        return [i for i, m in enumerate(self._missing) if m]

    def accept(self, part: ImagePart) -> bool:
        """Store `part`; True if it was new, False for a duplicate. `TransferError` if bad."""
        if part.transfer_id != self.offer.transfer_id:
            raise TransferError(f"image_part.transfer_id: expected {self.offer.transfer_id}, got {part.transfer_id}")
        if not part.crc_ok:
            raise TransferError(f"image_part.crc: expected {part.expected_crc():04x}, got {part.crc:04x}")
        psize = self.offer.part_size
        index, rem = divmod(part.offset, psize)
        if rem or index >= len(self._missing):
            raise TransferError(f"image_part.offset: {part.offset} is not a part boundary below {self.offer.total_size}")
        want = min(psize, self.offer.total_size - part.offset)
        if len(part.data) != want:
            raise TransferError(f"image_part.data: expected {want} bytes at offset {part.offset}, got {len(part.data)}")
        if not self._missing[index]:
            return False
        self._buf[part.offset:part.offset + want] = part.data
        self._missing[index] = False
        self._left -= 1
        return True

    def status(self, state: TransferState = TransferState.RECEIVING, *, seq: int = 0,
               error: int = 0, max_frame: int = DEFAULT_MTU) -> ImageStatus:
        base, bitmap = encode_missing(self._missing, max_frame - STATUS_OVERHEAD)
        return ImageStatus(transfer_id=self.offer.transfer_id, state=state, error=error,
                           base=min(base, 0xFFFF), bitmap=bitmap, seq=seq)

    def finish(self, framebuffer: bytes) -> bytes:
        """The framebuffer to show once complete; `TransferError` (and show nothing) otherwise.

        An update naming a ``base_hash`` applies only to the image with that hash. The payload
        expands to the whole framebuffer or to the region; a delta is XORed onto the old pixels;
        a region patches a copy of `framebuffer`. The result's hash must equal the offer's.
        """
        if not self.complete:
            raise TransferError(f"finish: {self._left} parts still missing")
        offer, model = self.offer, self.model
        if offer.base_hash is not None and image_hash(framebuffer) != offer.base_hash:
            raise TransferError(
                f"base_hash: expected {offer.base_hash.hex()}, showing {image_hash(framebuffer).hex()}",
                TransferResult.BASE_MISMATCH)
        region = None if offer.region is None else Region(*offer.region)
        try:
            old = framebuffer if region is None else extract_region(framebuffer, region, model)
            pixels = decompress(offer.image_format, bytes(self._buf), len(old))
            if offer.delta:
                pixels = xor_bytes(pixels, old)
            result = pixels if region is None else apply_region(framebuffer, region, pixels, model)
        except ImageError as exc:
            raise TransferError(f"payload: {exc}", TransferResult.DECODE_FAILED) from None
        got = image_hash(result)
        if got != offer.image_hash:
            raise TransferError(f"image_hash: expected {offer.image_hash.hex()}, got {got.hex()}",
                                TransferResult.HASH_MISMATCH)
        return result


def xor_bytes(a: bytes, b: bytes) -> bytes:
    """Byte-wise XOR of two equal-length strings (the delta encoding)."""
    if len(a) != len(b):
        raise ImageError(f"delta is {len(a)} bytes, base is {len(b)}")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


@dataclass(frozen=True, slots=True)
class ImageUpdate:
    """What to send to turn the label's image into a new one (see `plan_update`)."""

    payload: bytes
    image_format: ImageFormat
    image_hash: bytes
    region: Region | None = None
    base_hash: bytes | None = None
    delta: bool = False


def plan_update(model: LabelModel, new_fb: bytes, *, base_fb: bytes | None = None,
                region: Region | None = None,
                full: tuple[bytes, ImageFormat] | None = None) -> ImageUpdate | None:
    """The cheapest update from `base_fb` (what the label shows, if known) to `new_fb`.

    None when the label already shows `new_fb`. Without a base: the whole image in its smallest
    format. With a base: the smallest of whole image, region (`region`, or the bytes that
    changed) and XOR delta of either, counting the offer's extra header bytes. `full` is
    `best_payload(new_fb)` when the caller has it (it is not computed again).
    """
    size = framebuffer_size(model)
    if len(new_fb) != size or (base_fb is not None and len(base_fb) != size):
        raise TransferError(f"framebuffers must be {size} bytes for {model.name}")
    target = image_hash(new_fb)
    payload, fmt = full if full is not None else best_payload(new_fb)  # the caller may have it already
    best = ImageUpdate(payload, fmt, target)
    if base_fb is None:
        return best
    if base_fb == new_fb:
        return None
    base_hash = image_hash(base_fb)
    if region is None:
        region = changed_region(base_fb, new_fb, model)
    candidates = [(len(payload), best)]
    areas: list[tuple[Region | None, bytes, bytes]] = [(None, new_fb, base_fb)]
    if region is not None:
        areas.append((region, extract_region(new_fb, region, model), extract_region(base_fb, region, model)))
    for reg, new, old in areas:
        extra = HASH_SIZE + (8 if reg is not None else 0)
        for delta, data in ((False, new), (True, xor_bytes(new, old))):
            if reg is None and not delta:
                continue
            p, f = best_payload(data)
            candidates.append((len(p) + extra, ImageUpdate(p, f, target, reg, base_hash, delta)))
    return min(candidates, key=lambda c: c[0])[1]


class ImageSender:
    """Gateway side of one transfer: which parts to send, when to ask, when it is done.

    Frames come out unsealed (`Frame` objects); `GatewaySession.send_image` wraps this class so
    that they come out as authenticated bytes. Feed every `ImageStatus` from the label to
    `handle`, call `on_timeout` when the label has been quiet too long. ``outstanding`` is the
    set of parts not yet confirmed by the label.
    """

    def __init__(self, payload: bytes, image_format: ImageFormat | int, image_hash_: bytes, *,
                 transfer_id: int, max_frame: int = DEFAULT_MTU, authenticated: bool = True,
                 region: Region | None = None, base_hash: bytes | None = None,
                 window: int = 128, max_timeouts: int = 8, max_rounds: int = 200,
                 first_seq: int = 0, resume: bool = False, delta: bool = False) -> None:
        if not payload:
            raise TransferError("payload: empty")
        if len(image_hash_) != HASH_SIZE:
            raise TransferError(f"image_hash: expected {HASH_SIZE} bytes, got {len(image_hash_)}")
        if window < 1:
            raise TransferError(f"window must be >= 1, got {window}")
        self.payload = bytes(payload)
        self.part_size = part_size_for(max_frame, authenticated=authenticated)
        self.offer = ImageOffer(
            transfer_id=transfer_id, image_format=int(image_format), image_hash=bytes(image_hash_),
            total_size=len(self.payload), part_size=self.part_size,
            region=None if region is None else (region.x, region.y, region.w, region.h),
            base_hash=base_hash, delta=delta, ack_req=True)
        self.part_count = self.offer.part_count
        self.window = window
        self.max_timeouts = max_timeouts
        self.max_rounds = max_rounds
        self.outstanding: set[int] = set(range(self.part_count))
        self.done = False
        self.failed = False
        self.error: str | None = None
        self.error_code: int = 0
        self.parts_sent = 0
        self.rounds = 0
        self.timeouts = 0
        self._seq = first_seq & 0xFF
        self._await_seq: int | None = None
        self._heard = False  # any status for this transfer yet?
        self.resume = resume

    @property
    def finished(self) -> bool:
        return self.done or self.failed

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFF
        return self._seq

    def _ask(self, frame: Frame) -> Frame:
        """Mark `frame` as the one whose status answer we wait for."""
        seq = self._next_seq()
        self._await_seq = seq
        return replace(frame, seq=seq, ack_req=True)

    def start(self) -> list[Frame]:
        """The first frames to send.

        Normally the offer followed at once by the first window of parts (saves a round trip
        and a status frame). With ``resume=True`` (the label's check-in says it holds an
        unfinished transfer) only the offer, so the label's answer can name what it misses and
        nothing it already has is sent again.
        """
        if self.resume:
            return [self._ask(self.offer)]
        return [replace(self.offer, ack_req=False, seq=self._next_seq()), *self._send_round()]

    def handle(self, frame: Frame) -> list[Frame]:
        """Consume one frame from the label; return the frames to send next (maybe none)."""
        if self.finished or not isinstance(frame, ImageStatus) or frame.transfer_id != self.offer.transfer_id:
            return []
        if frame.state is TransferState.DISPLAYED:
            self.done, self.outstanding = True, set()
            return []
        if frame.state is TransferState.FAILED:
            return self._fail(f"label refused the image: error {frame.error:#04x}", frame.error)
        if frame.seq != self._await_seq:
            return []  # a stale or duplicated answer to an earlier round
        self._heard, self.timeouts = True, 0
        if frame.state is TransferState.NONE:
            self.outstanding = set(range(self.part_count))
            return [self._ask(self.offer)]
        self._apply_bitmap(frame)
        return self._send_round()

    def on_timeout(self) -> list[Frame]:
        """No answer in time: ask again (the offer if it was never answered, else the status)."""
        if self.finished:
            return []
        self.timeouts += 1
        if self.timeouts > self.max_timeouts:
            return self._fail(f"label silent after {self.max_timeouts} timeouts", TransferResult.TOO_MANY_ROUNDS)
        if not self._heard:
            return [self._ask(self.offer)]
        return [self._ask(ImageStatusRequest(transfer_id=self.offer.transfer_id))]

    def _apply_bitmap(self, status: ImageStatus) -> None:
        missing = set(status.missing())
        end = status.base + len(status.bitmap) * 8
        self.outstanding = {i for i in self.outstanding if i >= end or i in missing}
        self.outstanding |= {i for i in missing if i < self.part_count}
        self.outstanding |= set(range(end, self.part_count))
        self.outstanding -= set(range(min(status.base, self.part_count)))

    def _send_round(self) -> list[Frame]:
        self.rounds += 1
        if self.rounds > self.max_rounds:
            return self._fail(f"gave up after {self.max_rounds} rounds", TransferResult.TOO_MANY_ROUNDS)
        todo = sorted(self.outstanding)[:self.window]
        if not todo:  # label says nothing is missing but has not displayed: ask again
            return [self._ask(ImageStatusRequest(transfer_id=self.offer.transfer_id))]
        frames: list[Frame] = [self.part(i) for i in todo[:-1]]
        frames.append(self._ask(self.part(todo[-1])))
        self.parts_sent += len(todo)
        return frames

    def part(self, index: int) -> ImagePart:
        """The `ImagePart` frame for part `index` (no ACK_REQ)."""
        if not 0 <= index < self.part_count:
            raise TransferError(f"part index {index} outside 0..{self.part_count - 1}")
        off = index * self.part_size
        return ImagePart(transfer_id=self.offer.transfer_id, offset=off,
                         data=self.payload[off:off + self.part_size], seq=self._next_seq())

    def _fail(self, why: str, code: int) -> list[Frame]:
        self.failed, self.error, self.error_code = True, why, int(code)
        return []
