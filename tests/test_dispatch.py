"""Dispatch rules: retry backoff, counter budgets, and check-ins that cannot lie.

The server only believes what a label says with its key: a forged check-in (a byte changed)
or a replayed one (an old, genuine frame sent again) must not change what the server thinks
the label shows.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from eslserver.dispatch import backoff_s, counter_budget
from eslserver.gateway.events import Checkin
from firmware_proto.frames import parse_frame
from tests.brokers import mosquitto
from tests.pipeline_shop import shop, shop_settings

MILK = {"sku": "100100", "name": "Mleko 3,2% 1 l", "price": "3.49", "seq": 1}


@given(st.integers(min_value=1, max_value=60), st.integers(min_value=0, max_value=2**32))
def test_backoff_grows_is_capped_and_jittered(attempts: int, seed: int) -> None:
    settings = shop_settings(Path("/nonexistent"), None, retry_base_s=0.5, retry_max_s=30.0)
    delay = backoff_s(attempts, settings, random.Random(seed))
    nominal = min(30.0, 0.5 * 2 ** (attempts - 1))
    assert 0.5 * nominal <= delay < 1.5 * nominal


@given(st.integers(min_value=1, max_value=1 << 20))
def test_counter_budget_covers_every_part_several_times(payload_len: int) -> None:
    budget = counter_budget(payload_len)
    assert budget >= 256 + 8 * (payload_len // 240)
    assert budget < 1 << 16  # fits the envelope's u16 for any image a label can hold (1 MiB)


async def test_forged_and_replayed_checkins_are_not_believed(tmp_path: Path) -> None:
    async with mosquitto() as url, shop(tmp_path, url, labels=1) as s:
        await s.seed([MILK])
        mac = s.macs[0]
        await s.bind({mac: MILK["sku"]})
        before = (await s.converged())[mac]
        label = s.store.labels[mac]
        old_frame = label.session.checkin()  # genuine, authenticated: shows the 3.49 image

        await s.publish_prices({"sku": MILK["sku"], "price": "2.99", "seq": 2})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while (await s.label(mac))["displayed_hash"] == before["displayed_hash"] and loop.time() < deadline:
            await asyncio.sleep(0.05)
        now = (await s.converged())[mac]
        assert now["displayed_hash"] != before["displayed_hash"]

        genuine = parse_frame(label.session.checkin())
        # a well-formed frame (CRC fine) claiming the old image, with the genuine frame's tag
        forged = replace(genuine, displayed_hash=bytes.fromhex(before["displayed_hash"])).to_bytes()
        for frame in (old_frame, forged):
            await s.server.dispatcher.on_event("gw1", Checkin(mac=mac, rssi=-50, frame=frame).to_json())
            state = await s.label(mac)
            assert state["displayed_hash"] == now["displayed_hash"] and state["state"] == "ok"
        # and a genuine fresh one is believed
        await s.server.dispatcher.on_event("gw1", Checkin(mac=mac, rssi=-42, frame=label.session.checkin()).to_json())
        assert (await s.label(mac))["rssi"] == -42
