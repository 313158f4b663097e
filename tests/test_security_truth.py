"""No false "up to date": binding, rebinding and template changes never claim ``ok`` for an image
the label has not confirmed showing.

Before, rebinding a label that showed product A to product B published, for about a second, a
retained state with the new SKU, ``state ok`` and A's image hash as both expected and displayed:
an integration (or the dashboard) believed the shelf showed B while it showed A. Here every
retained state message of the label is recorded across the rebind (and across a template
change) and none may pair the new binding with ``ok`` before the label reported the new image.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from eslserver.server import SYSTEM
from tests.brokers import broker_url  # noqa: F401  (fixture: mosquitto and amqtt)
from tests.pipeline_shop import collect, expected_hash_for, shop

MILK = {"sku": "100100", "name": "Mleko 3,2% 1 l", "price": "3.49", "seq": 1}
BREAD = {"sku": "100200", "name": "Chleb żytni 500 g", "price": "5.99", "seq": 1}


def _states(messages: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.payload]


async def _settle(got: list[Any], count: int) -> None:
    for _ in range(100):
        if len(got) >= count:
            return
        await asyncio.sleep(0.05)


async def test_a_rebound_label_is_never_ok_with_the_old_image(tmp_path: Path, broker_url: str) -> None:  # noqa: F811
    async with shop(tmp_path, broker_url, labels=1) as s:
        mac = s.macs[0]
        await s.seed([MILK, BREAD])
        await s.bind({mac: MILK["sku"]})
        before = (await s.converged())[mac]
        milk_hash = before["expected_hash"]
        assert milk_hash == expected_hash_for(MILK, settings=s.settings)
        conn, got = await collect(broker_url, s.server.topics.label_state(mac))
        async with conn:
            await conn.connected.wait()
            await _settle(got, 1)  # the retained state of A, ok
            seen = len(got)
            state = await s.server.labels.bind(mac, BREAD["sku"], actor=SYSTEM)
            # what the bind answers is already honest: pending, A's image not expected any more
            assert state["sku"] == BREAD["sku"] and state["state"] == "pending", state
            assert state["expected_hash"] != milk_hash, state
            after = (await s.converged())[mac]
            bread_hash = expected_hash_for(BREAD, settings=s.settings)
            assert after["expected_hash"] == after["displayed_hash"] == bread_hash
            for _ in range(200):  # the retained state of B, ok, follows the label's confirmation
                last = _states(got[-1:])
                if last and last[0]["state"] == "ok" and last[0]["displayed_hash"] == bread_hash:
                    break
                await asyncio.sleep(0.05)
        published = _states(got[seen:])
        assert published, "no state was published for the rebind"
        for st in published:
            if st["sku"] == BREAD["sku"] and st["state"] == "ok":
                assert st["displayed_hash"] == st["expected_hash"] == bread_hash, st
            assert not (st["sku"] == BREAD["sku"] and st["expected_hash"] == milk_hash), st
        assert published[-1]["state"] == "ok" and published[-1]["displayed_hash"] == bread_hash


async def test_a_template_change_reopens_the_labels_drawn_with_it(tmp_path: Path, broker_url: str) -> None:  # noqa: F811
    async with shop(tmp_path, broker_url, labels=2) as s:
        await s.seed([MILK])
        await s.bind({mac: MILK["sku"] for mac in s.macs})
        old = await s.converged()
        name = "shelf-2.9"
        source, _ = await s.server.templates.get(name) or (None, 0)
        assert source is not None
        changed = source.replace("</label>", '<rect x="0" y="0" w="6" h="6" fill="red"/></label>', 1)
        assert changed != source
        await s.server.templates.save(name, changed, actor=SYSTEM)
        for mac in s.macs:
            st = await s.label(mac)
            # until the label confirms the new image, it is not claimed up to date
            assert st["state"] == "pending" or st["expected_hash"] != old[mac]["expected_hash"], st
        new = await s.converged()
        for mac in s.macs:
            assert new[mac]["expected_hash"] != old[mac]["expected_hash"]
            assert new[mac]["displayed_hash"] == new[mac]["expected_hash"]
