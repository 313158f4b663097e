"""A whole simulated store: the scheduler, the shared radio, convergence at scale."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from eslserver.gateway.conversation import Target, converge
from firmware_proto.frames import Checkin
from firmware_proto.gateway import GatewaySession
from firmware_proto.image import image_hash
from simulator.faults import FaultConfig
from simulator.label import factory_key
from simulator.links import MemoryRadio
from simulator.screen import blank_framebuffer, demo_indices, pack_indices
from simulator.store import SimStore, StoreConfig, StoreConfigError, label_address

KEY = b"store-key-16byte"


def targets_for(store: SimStore) -> dict[str, Target]:
    return {
        address: Target(factory_key(store.config.seed, address), KEY,
                        pack_indices(demo_indices(label.model, i), label.model))
        for i, (address, label) in enumerate(store.labels.items())
    }


async def test_2000_labels_converge_under_10_percent_loss() -> None:
    """The suite's scale test (benchmarks/simulator.py measures 10,000)."""
    store = SimStore(StoreConfig(labels=2000, always_listening=True, models=("1.54-bw", "2.9-bwry"),
                                 seed=3, faults=FaultConfig(seed=3, loss=0.1)))
    radio = MemoryRadio(store)
    await radio.start()
    targets = targets_for(store)
    results = await converge(radio, targets, concurrency=200)
    await radio.close()
    failed = {a: r for a, r in results.items() if not r.done}
    assert not failed, list(failed.items())[:3]
    for address, label in store.labels.items():
        assert label.displayed_hash == image_hash(targets[address].framebuffer)
    stats = store.stats()
    assert stats.paired == 2000 and stats.refreshes == 2000
    # 10 % loss each way: frames really went missing
    sent = sum(r.frames_sent for r in results.values())
    assert stats.frames_in < sent


async def test_sleeping_labels_converge_through_their_wake_windows() -> None:
    store = SimStore(StoreConfig(labels=60, wake_interval_s=0.2, listen_window_s=0.1, seed=4,
                                 faults=FaultConfig(seed=4, loss=0.1, corrupt=0.05, duplicate=0.05,
                                                    offline=0.1, offline_s=0.3)))
    radio = MemoryRadio(store)
    await radio.start()
    async with store:
        results = await converge(radio, targets_for(store), concurrency=60, timeout_s=0.08,
                                 attempts=40, connect_retry_s=0.02, connect_attempts=500)
    await radio.close()
    assert all(r.done for r in results.values()), [r for r in results.values() if not r.done][:3]


async def test_scheduler_wakes_each_label_on_its_interval() -> None:
    store = SimStore(StoreConfig(labels=50, wake_interval_s=0.1, listen_window_s=0.01))
    counts: dict[str, int] = {}
    store.add_checkin_listener(lambda a, f, r: counts.__setitem__(a, counts.get(a, 0) + 1))
    async with store:
        await asyncio.sleep(0.55)
    assert set(counts) == set(store.labels)
    assert all(3 <= c <= 7 for c in counts.values()), counts  # ~5; loop lag can only delay


async def test_checkins_are_what_the_label_reports() -> None:
    store = SimStore(StoreConfig(labels=3, wake_interval_s=0.0, start_spread_s=0.0))
    frames: dict[str, bytes] = {}
    store.add_checkin_listener(lambda a, f, r: None if a in frames else frames.__setitem__(a, f))
    async with store:
        await asyncio.sleep(0.05)
    assert set(frames) == set(store.labels)
    for address, frame in frames.items():
        checkin = GatewaySession(address).open(frame)
        assert isinstance(checkin, Checkin)
        label = store.label(address)
        assert checkin.model_id == label.model.model_id
        assert checkin.displayed_hash == image_hash(blank_framebuffer(label.model))
        assert checkin.rssi == label.rssi


async def test_offline_label_is_silent_then_checks_in() -> None:
    store = SimStore(StoreConfig(labels=1, wake_interval_s=0.05, listen_window_s=0.01))
    address = label_address(1)
    seen: list[float] = []
    store.add_checkin_listener(lambda a, f, r: seen.append(store.now()))
    async with store:
        store.take_offline(address, 0.3)
        start = store.now()
        await asyncio.sleep(0.5)
    assert seen and min(seen) >= start + 0.3 - 1e-3
    assert len(seen) >= 2


def test_idle_labels_are_small_and_share_their_blank_screens() -> None:
    SimStore(StoreConfig(labels=2, models=("2.9-bwry", "7.5-bwry")))  # warm caches
    tracemalloc.start()
    try:
        store = SimStore(StoreConfig(labels=1000, models=("2.9-bwry", "7.5-bwry"),
                                     faults=FaultConfig(seed=1, loss=0.1)))
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    screens = {id(label.framebuffer) for label in store.labels.values()}
    assert len(screens) == 2
    # an idle label costs a few KiB, far from its 96 KB (7.5") framebuffer: 10,000 fit easily
    assert used / 1000 < 4096


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"labels": -1}, "labels"), ({"models": ()}, "models"), ({"models": ("9.9-x",)}, "models"),
     ({"wake_interval_s": -1.0}, "wake_interval_s"), ({"listen_window_s": float("nan")}, "listen_window_s"),
     ({"max_frame": 10}, "max_frame")],
)
def test_store_config_validated(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(StoreConfigError, match=field):
        StoreConfig(**kwargs)  # type: ignore[arg-type]


def test_addresses_are_locally_administered_and_distinct() -> None:
    assert label_address(1) == "02:E5:00:00:00:01"
    assert label_address(0x01020304) == "02:E5:01:02:03:04"
    store = SimStore(StoreConfig(labels=300))
    assert len(set(store.labels)) == 300
