"""A coin-cell battery and its drain: per byte on the air, per wake, per display refresh.

The same `PowerModel` drives each simulated label's `Battery` (so a label that receives
many retries really runs down faster) and the analytic `estimate_life_days` the airtime
benchmark calls for "how long does a label last at four updates a day".

Assumptions (defaults of `PowerModel`, all overridable):

- Cell: CR2450, 600 mAh nominal at 3.0 V; 85 % of it usable before the voltage under
  radio pulses falls below what the label needs; 1 % a year self-discharge.
- Radio: Bluetooth LE 1M PHY, 1 Mbit/s so 8 µs a byte; nRF52-class currents with the DC/DC
  converter on: TX 0 dBm 5.3 mA, RX 5.4 mA. Link-layer headers, inter-frame spaces and
  ramp-up are charged as a 1.5× factor on the bytes' airtime.
- Wake: each check-in costs 3 ms of radio and CPU at 5.4 mA (advertise, listen window).
- Sleep: 2 µA (RTC running, RAM retained).
- Display refresh: e-paper draws current for the whole waveform; a full refresh takes 2 s
  for black/white, 15 s with red, 20 s with red and yellow, at 2 mA plus 6 mA scaled by
  panel area relative to a 7.5" 800×480 panel. A partial refresh (models that have it)
  takes 0.4 s.
- Voltage: a flat CR2450 discharge curve (3.0 V new, 2.9 V at half, 2.4 V near the end),
  so the label's reported millivolts fall the way a real label's do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_proto.models import LabelModel

__all__ = [
    "BatteryError", "PowerModel", "DEFAULT_POWER", "Battery", "LifeEstimate",
    "daily_charge", "estimate_life_days", "millivolts_for",
]

_REFRESH_S = {"bw": 2.0, "bwr": 15.0, "bwry": 20.0}
_REFERENCE_PIXELS = 800 * 480
# (fraction of usable charge used, millivolts): piecewise-linear CR2450 curve under load
_CURVE = ((0.0, 3000), (0.1, 2950), (0.5, 2900), (0.8, 2800), (0.9, 2650), (0.96, 2400), (1.0, 2000))


class BatteryError(ValueError):
    """A power-model setting or an estimate input out of range."""


def _positive(name: str, value: float, *, zero_ok: bool = False) -> None:
    ok = isinstance(value, (int, float)) and math.isfinite(value) and (value >= 0 if zero_ok else value > 0)
    if not ok:
        raise BatteryError(f"{name} must be a finite number {'>= 0' if zero_ok else '> 0'}, got {value!r}")


@dataclass(frozen=True, slots=True)
class PowerModel:
    """Every electrical assumption in one validated value (see the module docstring)."""

    capacity_mah: float = 600.0
    usable_fraction: float = 0.85
    self_discharge_per_year: float = 0.01
    bitrate_bps: float = 1_000_000.0
    airtime_overhead: float = 1.5
    tx_ma: float = 5.3
    rx_ma: float = 5.4
    wake_s: float = 0.003
    wake_ma: float = 5.4
    sleep_ua: float = 2.0
    refresh_base_ma: float = 2.0
    refresh_area_ma: float = 6.0
    partial_refresh_s: float = 0.4

    def __post_init__(self) -> None:
        for name in ("capacity_mah", "bitrate_bps", "airtime_overhead", "tx_ma", "rx_ma",
                     "wake_s", "wake_ma", "refresh_base_ma", "partial_refresh_s"):
            _positive(name, getattr(self, name))
        for name in ("sleep_ua", "refresh_area_ma", "self_discharge_per_year"):
            _positive(name, getattr(self, name), zero_ok=True)
        if not 0 < self.usable_fraction <= 1:
            raise BatteryError(f"usable_fraction must be in (0, 1], got {self.usable_fraction!r}")

    @property
    def usable_uc(self) -> float:
        """Usable charge in microcoulombs (1 mAh = 3.6 C)."""
        return self.capacity_mah * 3.6e6 * self.usable_fraction

    def tx_uc(self, nbytes: int) -> float:
        """Charge (µC) to transmit `nbytes` on the air."""
        return nbytes * 8 / self.bitrate_bps * self.airtime_overhead * self.tx_ma * 1e3

    def rx_uc(self, nbytes: int) -> float:
        """Charge (µC) to receive `nbytes`."""
        return nbytes * 8 / self.bitrate_bps * self.airtime_overhead * self.rx_ma * 1e3

    def wake_uc(self) -> float:
        """Charge (µC) of one wake (check-in and listen window)."""
        return self.wake_s * self.wake_ma * 1e3

    def sleep_uc(self, seconds: float) -> float:
        """Charge (µC) asleep for `seconds`."""
        return seconds * self.sleep_ua

    def refresh_uc(self, model: LabelModel, *, partial: bool = False) -> float:
        """Charge (µC) of one display refresh of `model` (partial only if the panel can)."""
        ma = self.refresh_base_ma + self.refresh_area_ma * (model.width * model.height) / _REFERENCE_PIXELS
        seconds = self.partial_refresh_s if partial and model.partial_refresh else _REFRESH_S[model.colours]
        return seconds * ma * 1e3


DEFAULT_POWER = PowerModel()


def millivolts_for(used_fraction: float) -> int:
    """Cell voltage under load after using `used_fraction` of the usable charge."""
    f = min(1.0, max(0.0, used_fraction))
    for (f0, v0), (f1, v1) in zip(_CURVE, _CURVE[1:]):
        if f <= f1:
            return round(v0 + (v1 - v0) * (f - f0) / (f1 - f0))
    return _CURVE[-1][1]


class Battery:
    """One label's cell: charge used so far, and the voltage that implies.

    Small on purpose (two slots) because a store has thousands of them.
    """

    __slots__ = ("power", "used_uc")

    def __init__(self, power: PowerModel = DEFAULT_POWER, *, used_fraction: float = 0.0) -> None:
        if not 0.0 <= used_fraction <= 1.0:
            raise BatteryError(f"used_fraction must be in [0, 1], got {used_fraction!r}")
        self.power = power
        self.used_uc = used_fraction * power.usable_uc

    @property
    def used_fraction(self) -> float:
        return min(1.0, self.used_uc / self.power.usable_uc)

    @property
    def millivolts(self) -> int:
        return millivolts_for(self.used_fraction)

    def set_millivolts(self, mv: int) -> None:
        """Move the charge used to where the curve reads `mv` (tests and fault injection)."""
        if not _CURVE[-1][1] <= mv <= _CURVE[0][1]:
            raise BatteryError(f"millivolts must be in {_CURVE[-1][1]}..{_CURVE[0][1]}, got {mv!r}")
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = (lo + hi) / 2
            if millivolts_for(mid) > mv:
                lo = mid
            else:
                hi = mid
        self.used_uc = hi * self.power.usable_uc

    def tx(self, nbytes: int) -> None:
        self.used_uc += self.power.tx_uc(nbytes)

    def rx(self, nbytes: int) -> None:
        self.used_uc += self.power.rx_uc(nbytes)

    def wake(self, slept_s: float = 0.0) -> None:
        self.used_uc += self.power.wake_uc() + self.power.sleep_uc(slept_s)

    def refresh(self, model: LabelModel, *, partial: bool = False) -> None:
        self.used_uc += self.power.refresh_uc(model, partial=partial)


@dataclass(frozen=True, slots=True)
class LifeEstimate:
    """Charge a label uses per day, by cause (millicoulombs), and the days that lasts."""

    radio_mc: float
    wake_mc: float
    sleep_mc: float
    refresh_mc: float
    self_discharge_mc: float
    days: float

    @property
    def total_mc(self) -> float:
        return self.radio_mc + self.wake_mc + self.sleep_mc + self.refresh_mc + self.self_discharge_mc


def daily_charge(
    model: LabelModel,
    updates_per_day: float,
    bytes_per_update_tx: int,
    bytes_per_update_rx: int,
    wake_interval_s: float,
    *,
    checkin_bytes: int = 32,
    partial: bool = False,
    power: PowerModel = DEFAULT_POWER,
) -> LifeEstimate:
    """Break a day's charge down by cause; see `estimate_life_days`."""
    _positive("updates_per_day", updates_per_day, zero_ok=True)
    _positive("wake_interval_s", wake_interval_s)
    for name, value in (("bytes_per_update_tx", bytes_per_update_tx),
                        ("bytes_per_update_rx", bytes_per_update_rx), ("checkin_bytes", checkin_bytes)):
        if not isinstance(value, int) or value < 0:
            raise BatteryError(f"{name} must be an int >= 0, got {value!r}")
    wakes = 86400.0 / wake_interval_s
    radio = updates_per_day * (power.tx_uc(bytes_per_update_tx) + power.rx_uc(bytes_per_update_rx))
    radio += wakes * power.tx_uc(checkin_bytes)
    wake = wakes * power.wake_uc()
    sleep = power.sleep_uc(86400.0)
    refresh = updates_per_day * power.refresh_uc(model, partial=partial)
    self_discharge = power.capacity_mah * 3.6e6 * power.self_discharge_per_year / 365.25
    per_day = radio + wake + sleep + refresh + self_discharge
    return LifeEstimate(radio / 1e3, wake / 1e3, sleep / 1e3, refresh / 1e3, self_discharge / 1e3,
                        power.usable_uc / per_day)


def estimate_life_days(
    model: LabelModel,
    updates_per_day: float,
    bytes_per_update_tx: int,
    bytes_per_update_rx: int,
    wake_interval_s: float,
    *,
    checkin_bytes: int = 32,
    partial: bool = False,
    power: PowerModel = DEFAULT_POWER,
) -> float:
    """Days a label of `model` lasts on one cell at a steady update rate.

    ``bytes_per_update_tx`` is what the *label* sends per update (acks, missing-part
    bitmaps, reports) and ``bytes_per_update_rx`` what it receives (all frames, headers and
    retries included, as the airtime benchmark counts them). Every ``wake_interval_s`` the
    label wakes and sends a ``checkin_bytes`` check-in. ``partial`` charges a partial
    refresh per update on panels that support it. Assumptions: see the module docstring.
    """
    return daily_charge(model, updates_per_day, bytes_per_update_tx, bytes_per_update_rx,
                        wake_interval_s, checkin_bytes=checkin_bytes, partial=partial,
                        power=power).days
