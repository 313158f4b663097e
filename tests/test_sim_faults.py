"""Fault injection: validated config, reproducible per seed, rates as configured."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.faults import FaultConfig, FaultConfigError, FaultPlan, SplitMix64

PACKETS = [bytes([i % 256]) * (20 + i % 50) for i in range(2000)]


def outcomes(config: FaultConfig, address: str = "02:E5:00:00:00:01") -> list[list[tuple[float, bytes]]]:
    faults = FaultPlan(config).for_label(address)
    return [faults.downlink.deliveries(p) for p in PACKETS]


def test_same_seed_same_fault_sequence() -> None:
    cfg = FaultConfig(seed=42, loss=0.1, corrupt=0.1, duplicate=0.1, latency_s=0.01, jitter_s=0.005)
    assert outcomes(cfg) == outcomes(cfg)
    plan_a, plan_b = FaultPlan(cfg), FaultPlan(cfg)
    a, b = plan_a.for_label("02:E5:00:00:00:09"), plan_b.for_label("02:E5:00:00:00:09")
    assert [a.reboots() for _ in range(50)] == [b.reboots() for _ in range(50)]


def test_different_seed_or_label_differs() -> None:
    cfg = FaultConfig(seed=42, loss=0.3)
    assert outcomes(cfg) != outcomes(FaultConfig(seed=43, loss=0.3))
    assert outcomes(cfg) != outcomes(cfg, "02:E5:00:00:00:02")


def test_labels_do_not_share_a_stream() -> None:
    """Interleaving another label's traffic does not change this label's faults."""
    cfg = FaultConfig(seed=1, loss=0.2, corrupt=0.2)
    alone = outcomes(cfg)
    plan = FaultPlan(cfg)
    mine, other = plan.for_label("02:E5:00:00:00:01"), plan.for_label("02:E5:00:00:00:02")
    mixed = []
    for p in PACKETS:
        other.downlink.deliveries(p)
        mixed.append(mine.downlink.deliveries(p))
    assert mixed == alone


def test_rates_match_config() -> None:
    cfg = FaultConfig(seed=5, loss=0.1, corrupt=0.2, duplicate=0.05)
    res = outcomes(cfg)
    lost = sum(1 for r in res if not r)
    dup = sum(1 for r in res if len(r) == 2)
    corrupted = sum(1 for r, p in zip(res, PACKETS) if r and r[0][1] != p)
    n = len(PACKETS)
    assert 0.07 < lost / n < 0.13
    assert 0.02 < dup / (n - lost) < 0.08
    assert 0.16 < corrupted / (n - lost) < 0.24


def test_corruption_flips_bits_only() -> None:
    cfg = FaultConfig(seed=3, corrupt=1.0, corrupt_bits=3)
    for r, p in zip(outcomes(cfg), PACKETS):
        (delay, got), = r
        assert len(got) == len(p)
        flipped = sum(bin(a ^ b).count("1") for a, b in zip(got, p))
        assert 1 <= flipped <= 3


def test_latency_and_jitter_bounds() -> None:
    cfg = FaultConfig(seed=3, latency_s=0.05, jitter_s=0.02)
    delays = [d for r in outcomes(cfg) for d, _ in r]
    assert min(delays) >= 0.03 and max(delays) <= 0.07
    assert len(set(delays)) > 100


def test_lossless_passes_everything_untouched() -> None:
    assert outcomes(FaultConfig()) == [[(0.0, p)] for p in PACKETS]
    assert FaultConfig().inert and not FaultConfig(reboot=0.1).inert


def test_offline_and_low_battery_decisions() -> None:
    plan = FaultPlan(FaultConfig(seed=9, offline=0.25, offline_s=12.0, low_battery=0.3))
    lf = plan.for_label("02:E5:00:00:00:01")
    offs = [lf.goes_offline() for _ in range(2000)]
    assert set(offs) == {0.0, 12.0}
    assert 0.2 < offs.count(12.0) / len(offs) < 0.3
    lows = [plan.starts_low(f"02:E5:00:00:{i // 256:02X}:{i % 256:02X}") for i in range(2000)]
    assert 0.25 < sum(lows) / len(lows) < 0.35
    assert lows == [plan.starts_low(f"02:E5:00:00:{i // 256:02X}:{i % 256:02X}") for i in range(2000)]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"loss": 1.0}, "loss"),
        ({"loss": -0.1}, "loss"),
        ({"corrupt": 1.5}, "corrupt"),
        ({"duplicate": float("nan")}, "duplicate"),
        ({"latency_s": -1.0}, "latency_s"),
        ({"jitter_s": float("inf")}, "jitter_s"),
        ({"corrupt_bits": 0}, "corrupt_bits"),
        ({"seed": "x"}, "seed"),
        ({"offline": 2}, "offline"),
    ],
)
def test_config_is_validated_once(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(FaultConfigError, match=field):
        FaultConfig(**kwargs)  # type: ignore[arg-type]


@given(st.integers(0, 2**64 - 1))
@settings(max_examples=100)
def test_splitmix_is_uniformish_and_repeatable(seed: int) -> None:
    a, b = SplitMix64(seed), SplitMix64(seed)
    xs = [a.random() for _ in range(64)]
    assert xs == [b.random() for _ in range(64)]
    assert all(0.0 <= x < 1.0 for x in xs)
    assert all(0 <= a.below(7) < 7 for _ in range(64))
