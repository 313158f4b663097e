"""Seeded, reproducible fault injection for simulated radios.

Everything random in the simulator comes from here, from a counter-based generator
(SplitMix64) keyed on the run's seed and the label's address, so that:

- the same seed gives the same fault sequence for the same traffic, whatever order the
  event loop happens to interleave different labels in (each label has its own stream);
- a generator costs one Python int per label, so 10,000 labels stay cheap.

`FaultConfig` is validated once at construction; `FaultPlan` hands out per-label
`LinkFaults` (what happens to each packet) and per-label decisions (starts on a low
battery, goes offline at a wake, reboots after a frame).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

__all__ = ["FaultConfigError", "FaultConfig", "SplitMix64", "LinkFaults", "LabelFaults", "FaultPlan"]

_MASK = (1 << 64) - 1


class FaultConfigError(ValueError):
    """A fault setting out of range (names the field and the value)."""


def _probability(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise FaultConfigError(f"{name} must be a probability in [0, 1], got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise FaultConfigError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """What can go wrong, and how often. All probabilities are per event.

    ``loss``, ``corrupt``, ``duplicate``: per packet, each direction independently.
    ``corrupt_bits``: a corrupted packet gets 1..corrupt_bits random bit flips.
    ``latency_s`` ± ``jitter_s``: delivery delay per packet (uniform jitter, never < 0).
    ``offline``: per wake, the chance the label drops off the air for ``offline_s``.
    ``reboot``: per frame the label receives, the chance it reboots just after (losing
    what it held in RAM mid-transfer; flash and the e-paper image survive);
    ``reboot_loses_transfer`` also wipes the partly received image from flash.
    ``low_battery``: the fraction of labels that start below the display threshold.
    """

    seed: int = 0
    loss: float = 0.0
    corrupt: float = 0.0
    corrupt_bits: int = 3
    duplicate: float = 0.0
    latency_s: float = 0.0
    jitter_s: float = 0.0
    offline: float = 0.0
    offline_s: float = 30.0
    reboot: float = 0.0
    reboot_loses_transfer: bool = False
    low_battery: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise FaultConfigError(f"seed must be an int, got {self.seed!r}")
        for name in ("loss", "corrupt", "duplicate", "offline", "reboot", "low_battery"):
            _probability(name, getattr(self, name))
        if self.loss >= 1.0:
            raise FaultConfigError(f"loss must be < 1 (nothing would ever arrive), got {self.loss!r}")
        for name in ("latency_s", "jitter_s", "offline_s"):
            _non_negative(name, getattr(self, name))
        if not isinstance(self.corrupt_bits, int) or not 1 <= self.corrupt_bits <= 64:
            raise FaultConfigError(f"corrupt_bits must be an int in 1..64, got {self.corrupt_bits!r}")

    @property
    def lossless(self) -> bool:
        """True when packets are never dropped, altered, duplicated or delayed."""
        return not (self.loss or self.corrupt or self.duplicate or self.latency_s or self.jitter_s)

    @property
    def inert(self) -> bool:
        """True when nothing at all can go wrong (labels then need no fault streams)."""
        return self.lossless and not (self.offline or self.reboot or self.low_battery)


class SplitMix64:
    """A tiny deterministic generator (Steele, Lea & Flood 2014): one int of state."""

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK

    def next_u64(self) -> int:
        self._state = (self._state + 0x9E3779B97F4A7C15) & _MASK
        z = self._state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def random(self) -> float:
        """Uniform in [0, 1)."""
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))

    def below(self, n: int) -> int:
        """Uniform int in [0, n)."""
        if n <= 0:
            raise ValueError(f"n must be > 0, got {n}")
        return self.next_u64() % n


def _derive(seed: int, *parts: str) -> int:
    digest = hashlib.blake2b("\x1f".join((str(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


class LinkFaults:
    """What happens to each packet on one direction of one label's link."""

    __slots__ = ("_cfg", "_rng")

    def __init__(self, config: FaultConfig, rng: SplitMix64) -> None:
        self._cfg = config
        self._rng = rng

    def deliveries(self, packet: bytes) -> list[tuple[float, bytes]]:
        """(delay in seconds, bytes) for each copy of `packet` that arrives; [] when lost.

        Draws from the generator in a fixed order (loss, corrupt, duplicate, latency per
        copy), so a given seed yields the same outcome for the same packet sequence.
        """
        cfg = self._cfg
        if cfg.lossless:
            return [(0.0, packet)]
        rng = self._rng
        if cfg.loss and rng.random() < cfg.loss:
            return []
        if cfg.corrupt and packet and rng.random() < cfg.corrupt:
            buf = bytearray(packet)
            nbits = len(buf) * 8
            flips = min(nbits, 1 + rng.below(cfg.corrupt_bits))
            chosen: set[int] = set()
            while len(chosen) < flips:  # distinct bits, so a corrupted packet always differs
                chosen.add(rng.below(nbits))
            for bit in sorted(chosen):
                buf[bit >> 3] ^= 1 << (bit & 7)
            packet = bytes(buf)
        copies = 2 if cfg.duplicate and rng.random() < cfg.duplicate else 1
        out = []
        for _ in range(copies):
            delay = cfg.latency_s
            if cfg.jitter_s:
                delay = max(0.0, delay + (2.0 * rng.random() - 1.0) * cfg.jitter_s)
            out.append((delay, packet))
        return out


class LabelFaults:
    """One label's fault streams: its uplink, downlink and its own misfortunes."""

    __slots__ = ("uplink", "downlink", "_cfg", "_rng")

    @property
    def loses_transfer(self) -> bool:
        """Whether a reboot also loses the partly received image."""
        return self._cfg.reboot_loses_transfer

    def __init__(self, config: FaultConfig, address: str) -> None:
        self._cfg = config
        self.downlink = LinkFaults(config, SplitMix64(_derive(config.seed, address, "down")))
        """Gateway → label."""
        self.uplink = LinkFaults(config, SplitMix64(_derive(config.seed, address, "up")))
        """Label → gateway."""
        self._rng = SplitMix64(_derive(config.seed, address, "label"))

    def goes_offline(self) -> float:
        """Seconds to stay offline from this wake (0.0: stays on the air)."""
        if self._cfg.offline and self._rng.random() < self._cfg.offline:
            return self._cfg.offline_s
        return 0.0

    def reboots(self) -> bool:
        """Whether the label reboots after the frame it just received."""
        return bool(self._cfg.reboot) and self._rng.random() < self._cfg.reboot


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """A run's faults: hands each label its own reproducible streams."""

    config: FaultConfig

    def for_label(self, address: str) -> LabelFaults:
        return LabelFaults(self.config, address)

    def starts_low(self, address: str) -> bool:
        """Whether this label starts with a battery below the display threshold."""
        if not self.config.low_battery:
            return False
        return SplitMix64(_derive(self.config.seed, address, "battery")).random() < self.config.low_battery
