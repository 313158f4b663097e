"""Simulated labels' flash on disk, so a simulated store survives a restart as a real one does.

A real label keeps its key, its counters and the picture on its e-paper through a power cut,
and the server relies on that: a label that comes back without its key is not paired again
by itself. `StateFile` gives simulated labels the same memory: per simulated store, a JSON
snapshot of every label (replaced atomically: temporary file, then rename) and a journal
beside it (``FILE.log``, one JSON line per change of one label's key or counter marks).

Counters never go backwards across a restart, even after a crash (``kill -9``), because what
is on disk always holds a *high-water mark* at or above every counter the label may have used:

- while the store runs, every counter is recorded ``reserve`` above its value, and a label
  whose counter passes the mark on disk (or whose key changes) gets a journal line *before*
  the frame that moved it leaves the label — as firmware writes a counter block to flash
  before using it; the replay windows are recorded as "everything up to the mark seen";
- a journal line costs one small append, whatever the size of the store; the snapshot (every
  label, with its screen) is written now and then, and starts a new journal generation (lines
  of older generations are ignored, then truncated);
- a clean stop (`StateFile.write` with ``exact=True``) records the exact values.

After a crash a label therefore continues above its mark: it never reuses a transmit counter,
never accepts a frame it may have accepted before, and reports the mark in its check-in, so
the server continues above it. The screen is written on the next periodic write; after a
crash a label may show an older picture, reports its hash, and the server sends it again.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_proto.auth import REPLAY_WINDOW, ReplayWindow
from firmware_proto.image import image_hash
from firmware_proto.models import UnknownModelError, get_model
from firmware_proto.transfer import framebuffer_size

from simulator.label import SimLabel

__all__ = ["COUNTER_RESERVE", "LabelState", "StateFile", "StateFileError"]

FORMAT = "esl-simulator-state"
VERSION = 1
COUNTER_RESERVE = 256
"""How far ahead of use counters are recorded while running (a crash skips at most this)."""
_FULL_MASK = (1 << REPLAY_WINDOW) - 1
_U32 = 0xFFFFFFFF


class StateFileError(ValueError):
    """A state file that cannot be used (names the file, the label, the field and the value)."""


@dataclass(frozen=True, slots=True)
class LabelState:
    """What one label keeps in flash: key, counters, replay windows and its screen."""

    model: str
    label_key: bytes | None = field(repr=False)  # a key stays out of reprs (logs, tracebacks)
    esl_id: int
    tx_counter: int
    rx_highest: int
    rx_mask: int
    factory_rx_highest: int
    factory_rx_mask: int
    framebuffer: bytes

    @classmethod
    def of(cls, label: SimLabel, *, reserve: int = 0) -> LabelState:
        """`label`'s flash now; with ``reserve`` > 0, counters `reserve` ahead and windows full."""
        flash = label.flash

        def ahead(counter: int) -> int:
            return min(_U32, counter + reserve)

        return cls(model=label.model.name, label_key=flash.label_key, esl_id=flash.esl_id,
                   tx_counter=ahead(flash.tx_counter), rx_highest=ahead(flash.rx.highest),
                   rx_mask=_FULL_MASK if reserve else flash.rx.mask,
                   factory_rx_highest=ahead(flash.factory_rx.highest),
                   factory_rx_mask=_FULL_MASK if reserve else flash.factory_rx.mask,
                   framebuffer=flash.framebuffer)

    def restore(self, label: SimLabel) -> None:
        """Put this state into `label`'s flash and boot it (RAM state is lost, as in a reboot)."""
        if label.model.name != self.model:
            raise StateFileError(f"label {label.address}: model is {self.model!r} in the state file, "
                                 f"{label.model.name!r} in this store")
        flash = label.flash
        flash.label_key, flash.esl_id, flash.tx_counter = self.label_key, self.esl_id, self.tx_counter
        flash.rx = ReplayWindow(self.rx_highest, self.rx_mask)
        flash.factory_rx = ReplayWindow(self.factory_rx_highest, self.factory_rx_mask)
        flash.framebuffer = self.framebuffer
        flash.transfer = flash.last_result = None
        label.reboot()
        label.reboots = 0  # a restart of the simulator, not a fault of the label
        label.screen_version = 0

    def keys_json(self) -> dict[str, Any]:
        """Model, key and counters as JSON (a journal line: everything but the screen)."""
        return {"model": self.model, "label_key": None if self.label_key is None else self.label_key.hex(),
                "esl_id": self.esl_id, "tx_counter": self.tx_counter,
                "rx_highest": self.rx_highest, "rx_mask": self.rx_mask,
                "factory_rx_highest": self.factory_rx_highest, "factory_rx_mask": self.factory_rx_mask}

    def to_json(self, screen: str | None = None) -> dict[str, Any]:
        """A JSON object; `screen` is `encode_screen(self.framebuffer)` when the caller has it."""
        return {**self.keys_json(), "screen": encode_screen(self.framebuffer) if screen is None else screen,
                "screen_hash": image_hash(self.framebuffer).hex()}

    @classmethod
    def from_json(cls, address: str, obj: object, *, framebuffer: bytes | None = None) -> LabelState:
        """Validate one label's entry (a journal line when `framebuffer` is given: the screen
        comes from elsewhere); `StateFileError` names the label, the field and the value."""
        def bad(name: str, value: object, expected: str) -> StateFileError:
            return StateFileError(f"label {address}: {name} must be {expected}, got {_short(value)}")

        if not isinstance(obj, Mapping):
            raise bad("entry", obj, "an object")
        model_name = obj.get("model")
        try:
            model = get_model(model_name) if isinstance(model_name, str) else None
        except UnknownModelError:
            model = None
        if model is None:
            raise bad("model", model_name, "a known label model")
        counters: dict[str, int] = {}
        for name, top in (("esl_id", 0xFF), ("tx_counter", _U32), ("rx_highest", _U32), ("rx_mask", _FULL_MASK),
                          ("factory_rx_highest", _U32), ("factory_rx_mask", _FULL_MASK)):
            value = obj.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
                raise bad(name, value, f"an integer in 0..{top}")
            counters[name] = value
        raw_key = obj.get("label_key")
        key: bytes | None = None
        if raw_key is not None:
            try:
                key = bytes.fromhex(raw_key) if isinstance(raw_key, str) else None
            except ValueError:
                key = None
            if key is None or len(key) != 16:
                raise bad("label_key", raw_key, "null or 32 hex digits")
        if framebuffer is None:
            framebuffer = decode_screen(obj.get("screen"), framebuffer_size(model),
                                        lambda value, why: bad("screen", value, why))
            if image_hash(framebuffer).hex() != obj.get("screen_hash"):
                raise bad("screen_hash", obj.get("screen_hash"), f"the screen's hash {image_hash(framebuffer).hex()}")
        return cls(model=model.name, label_key=key, framebuffer=framebuffer, **counters)


def encode_screen(framebuffer: bytes) -> str:
    """A framebuffer as text: deflate, then base64 (label screens are mostly blank: small)."""
    return base64.b64encode(zlib.compress(framebuffer, 6)).decode("ascii")


def decode_screen(text: object, size: int, bad: Any) -> bytes:
    """`encode_screen`'s input back, exactly `size` bytes; ``bad(value, expected)`` makes the error."""
    if not isinstance(text, str):
        raise bad(text, "base64 text")
    try:
        packed = base64.b64decode(text, validate=True)
        out = zlib.decompressobj().decompress(packed, size + 1)  # never more than one screen
    except (binascii.Error, zlib.error, ValueError):
        raise bad(text, "base64 of a deflated framebuffer") from None
    if len(out) != size:
        raise bad(text, f"a framebuffer of {size} bytes (it holds {len(out)})")
    return out


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class StateFile:
    """One simulated store's flash on disk: `load` once, `note` after every frame, `write` a
    snapshot now and then and at a clean stop (``exact=True``), `close` at the end.

    Entries of labels this store does not have (a store run with fewer labels) are kept as
    they are, so a later run with more labels finds them.
    """

    def __init__(self, path: Path, *, seed: int, reserve: int = COUNTER_RESERVE) -> None:
        if not isinstance(reserve, int) or not 1 <= reserve <= 1 << 20:
            raise StateFileError(f"reserve must be an int in 1..{1 << 20}, got {reserve!r}")
        self.path = Path(path)
        self.journal_path = self.path.with_name(self.path.name + ".log")
        self.seed = seed
        self.reserve = reserve
        self.dirty = False
        self.writes = 0
        self.journaled = 0
        self.generation = 0
        self._labels: Mapping[str, SimLabel] = {}
        self._others: dict[str, Any] = {}
        self._on_disk: dict[str, LabelState] = {}
        self._screens: dict[str, tuple[bytes, str]] = {}  # address -> (framebuffer, encoded)
        self._journal: int | None = None  # file descriptor, O_APPEND

    def _error(self, what: str) -> StateFileError:
        return StateFileError(f"simulator state {self.path}: {what}")

    def load(self, labels: Mapping[str, SimLabel]) -> int:
        """Restore the labels found on disk into `labels`; return how many were restored.

        No file is a store fresh from the factory (nothing restored)."""
        self._labels = labels
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise self._error(f"cannot read: {exc}") from None
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise self._error(f"not JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise self._error(f"format must be {FORMAT!r} version {VERSION}, got "
                              f"{_short(doc.get('format') if isinstance(doc, dict) else doc)} version "
                              f"{_short(doc.get('version') if isinstance(doc, dict) else None)}")
        if doc.get("seed") != self.seed:
            raise self._error(f"seed is {_short(doc.get('seed'))} there, {self.seed} in this store (factory keys "
                              "differ); use that seed or another file")
        entries, generation = doc.get("labels"), doc.get("generation")
        if not isinstance(entries, dict):
            raise self._error(f"labels must be an object, got {_short(entries)}")
        if not isinstance(generation, int) or isinstance(generation, bool) or generation < 0:
            raise self._error(f"generation must be an integer >= 0, got {_short(generation)}")
        self.generation = generation
        states: dict[str, LabelState] = {}
        try:
            for address, entry in entries.items():
                if address in labels:
                    states[address] = LabelState.from_json(address, entry)
                else:
                    self._others[address] = entry
            for address, line in self._journal_lines():
                label = labels.get(address)
                if label is not None:
                    screen = states[address].framebuffer if address in states else label.framebuffer
                    states[address] = LabelState.from_json(address, line, framebuffer=screen)
                elif address in self._others:
                    self._others[address] = {**self._others[address], **line}
            for address, state in states.items():
                state.restore(labels[address])
        except StateFileError as exc:
            raise self._error(str(exc)) from None
        self._on_disk = states
        return len(states)

    def _journal_lines(self) -> list[tuple[str, dict[str, Any]]]:
        """This generation's journal lines, oldest first (a torn last line is a crash mid-write:
        left out; that line's frame never left the label)."""
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._error(f"cannot read {self.journal_path.name}: {exc}") from None
        out: list[tuple[str, dict[str, Any]]] = []
        lines = data.split(b"\n")
        for number, raw in enumerate(lines[:-1], 1):  # the last piece has no newline after it
            try:
                line = json.loads(raw)
            except ValueError:
                raise self._error(f"{self.journal_path.name} line {number} is not JSON: {_short(raw)}") from None
            if not isinstance(line, dict) or not isinstance(line.get("address"), str):
                raise self._error(f"{self.journal_path.name} line {number} has no address: {_short(line)}")
            if line.pop("generation", None) == self.generation:
                out.append((line.pop("address"), line))
        return out

    def note(self, label: SimLabel) -> None:
        """`label` received or sent frames. When its key changed or a counter passed its mark
        on disk, a journal line records it now, before the frame leaves the label (one small
        append); everything else waits for the next snapshot. ``OSError`` if that fails."""
        self.dirty = True
        disk = self._on_disk.get(label.address)
        flash = label.flash
        if (disk is None or flash.label_key != disk.label_key or flash.esl_id != disk.esl_id
                or flash.tx_counter > disk.tx_counter or flash.rx.highest > disk.rx_highest
                or flash.factory_rx.highest > disk.factory_rx_highest):
            state = LabelState.of(label, reserve=self.reserve)
            line = {"generation": self.generation, "address": label.address, **state.keys_json()}
            if self._journal is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._journal = os.open(self.journal_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.write(self._journal, json.dumps(line, separators=(",", ":")).encode() + b"\n")
            self._on_disk[label.address] = state
            self.journaled += 1

    def write(self, *, exact: bool = False) -> None:
        """Replace the snapshot with every label's state, in a new journal generation (then
        empty the journal); counters `reserve` ahead unless `exact` (a clean stop, when no
        frame can follow). ``OSError`` if the file cannot be written."""
        reserve = 0 if exact else self.reserve
        entries: dict[str, Any] = dict(self._others)
        on_disk: dict[str, LabelState] = {}
        for address, label in self._labels.items():
            state = LabelState.of(label, reserve=reserve)
            cached = self._screens.get(address)
            if cached is None or cached[0] is not state.framebuffer:
                cached = (state.framebuffer, encode_screen(state.framebuffer))
                self._screens[address] = cached
            entries[address] = state.to_json(cached[1])
            on_disk[address] = state
        generation = self.generation + 1
        doc = {"format": FORMAT, "version": VERSION, "seed": self.seed, "generation": generation,
               "labels": entries}
        data = json.dumps(doc, separators=(",", ":")).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if exact:  # a process crash cannot lose a renamed file; a power cut could
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.generation = generation
        self._on_disk = on_disk
        self.dirty = False
        self.writes += 1
        if self._journal is not None:
            os.ftruncate(self._journal, 0)  # its lines belong to the previous generation
        else:
            self.journal_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Close the journal (safe twice)."""
        fd, self._journal = self._journal, None
        if fd is not None:
            os.close(fd)
