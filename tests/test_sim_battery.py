"""Battery drain and the life estimate the airtime benchmark uses."""

from __future__ import annotations

import pytest

from firmware_proto.models import get_model
from simulator.battery import (
    DEFAULT_POWER, Battery, BatteryError, PowerModel, daily_charge, estimate_life_days,
    millivolts_for,
)

M29 = get_model("2.9-bwry")


def test_life_estimate_is_years_at_four_updates_a_day() -> None:
    days = estimate_life_days(M29, 4, 600, 12_000, 60.0)
    assert 5 * 365 < days < 15 * 365  # what commercial labels claim: several years


def test_life_estimate_falls_with_more_traffic_refreshes_and_wakes() -> None:
    base = estimate_life_days(M29, 4, 600, 12_000, 60.0)
    assert estimate_life_days(M29, 40, 600, 12_000, 60.0) < base
    assert estimate_life_days(M29, 4, 600, 120_000, 60.0) < base
    assert estimate_life_days(M29, 4, 600, 12_000, 5.0) < base
    assert estimate_life_days(get_model("7.5-bwry"), 4, 600, 12_000, 60.0) < base
    partial = estimate_life_days(get_model("1.54-bw"), 4, 600, 12_000, 60.0, partial=True)
    assert partial > estimate_life_days(get_model("1.54-bw"), 4, 600, 12_000, 60.0)


def test_breakdown_adds_up() -> None:
    e = daily_charge(M29, 4, 600, 12_000, 60.0)
    assert e.days == pytest.approx(DEFAULT_POWER.usable_uc / 1e3 / e.total_mc)
    # with these assumptions the e-paper refresh and sleep dominate, not the radio
    assert e.refresh_mc > e.radio_mc and e.sleep_mc > e.radio_mc


def test_ble_1m_airtime_charge() -> None:
    p = PowerModel(airtime_overhead=1.0)
    # 1000 bytes at 1 Mbit/s = 8 ms; at 5.3 mA that is 42.4 µC
    assert p.tx_uc(1000) == pytest.approx(42.4)
    assert p.rx_uc(1000) == pytest.approx(43.2)


def test_battery_drains_per_byte_wake_and_refresh() -> None:
    b = Battery()
    before = b.used_uc
    b.rx(1000)
    b.tx(100)
    b.wake(60.0)
    after_radio = b.used_uc
    b.refresh(M29)
    assert before < after_radio < b.used_uc
    assert b.used_uc - after_radio == pytest.approx(DEFAULT_POWER.refresh_uc(M29))


def test_voltage_curve_and_threshold() -> None:
    assert millivolts_for(0.0) == 3000
    assert millivolts_for(1.0) == 2000
    volts = [millivolts_for(i / 100) for i in range(101)]
    assert volts == sorted(volts, reverse=True)
    b = Battery()
    b.set_millivolts(2150)
    assert b.millivolts == pytest.approx(2150, abs=2)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"capacity_mah": 0}, "capacity_mah"), ({"usable_fraction": 1.5}, "usable_fraction"),
     ({"sleep_ua": -1}, "sleep_ua"), ({"tx_ma": float("nan")}, "tx_ma")],
)
def test_power_model_validated(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(BatteryError, match=field):
        PowerModel(**kwargs)


def test_estimate_inputs_validated() -> None:
    with pytest.raises(BatteryError, match="wake_interval_s"):
        estimate_life_days(M29, 4, 0, 0, 0.0)
    with pytest.raises(BatteryError, match="bytes_per_update_rx"):
        estimate_life_days(M29, 4, 0, -1, 60.0)
