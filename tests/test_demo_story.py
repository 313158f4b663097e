"""`esl demo` tells its story: quiet restarts, labels that keep their keys, price history
from the first minute, a POS that can be switched off and whose changes are logged."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.processes import ChildProcess, Processes, esl_argv

DEMO_READY = r"http\s+(http://\S+/)[\s\S]*?token\s+(\S+)[\s\S]*?POS\s"
"""The demo's header: HTTP address, admin token, then the POS line (the last one)."""


def demo_argv(data: Path, *args: str) -> list[str]:
    return esl_argv("demo", "--http-port", "0", "--data", str(data), *args)


async def start_demo(demo: ChildProcess) -> tuple[str, dict[str, str]]:
    """Start `demo` and wait for its header: (HTTP base URL, auth headers)."""
    match = await demo.start(ready=DEMO_READY, timeout=60)
    assert match is not None
    return match.group(1), {"Authorization": f"Bearer {match.group(2)}"}


async def get_json(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    async with http.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def finish(demo: ChildProcess, timeout: float = 60.0) -> int | None:
    """Wait until the demo stops by itself (``--duration``); its exit code."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while demo.running and loop.time() < deadline:
        await asyncio.sleep(0.1)
    assert not demo.running, "the demo did not stop after its --duration\n" + demo.tail()
    return await demo.stop()


def run_log(demo: ChildProcess, run: int) -> str:
    """What the demo logged in its `run`-th start (the log file collects every start)."""
    return demo.log.split("=== start ")[run]


def problems(log: str) -> list[str]:
    return [line for line in log.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", line)]


# laptops get amqtt, machines with Mosquitto get Mosquitto: the demo must be quiet on both
@pytest.mark.parametrize("broker", ["auto", "amqtt"])
async def test_a_second_demo_on_the_same_data_is_quiet_and_pairs_nothing(tmp_path: Path, broker: str) -> None:
    data = tmp_path / "store"
    async with Processes(tmp_path / "procs") as procs:
        demo = procs.spawn("demo", demo_argv(data, "--labels", "6", "--duration", "8", "--feed-interval", "1",
                                             "--feed-size", "2"), env={"ESL_EMBEDDED_BROKER": broker})
        http_url, headers = await start_demo(demo)
        async with aiohttp.ClientSession() as http:
            # a promoted sample product shows its prior price from the first minute, computed
            # from five weeks of history the POS "sent" (the sample catalogue says 4.79)
            product = await get_json(http, http_url + "api/v1/products/100130", headers)
        assert product["lowest_30d"] == "4.79", product
        oldest = datetime.fromisoformat(min(h["start_at"] for h in product["history"]))
        assert datetime.now(timezone.utc) - oldest > timedelta(days=31), product["history"]
        assert await finish(demo) == 0
        first = run_log(demo, 1)
        assert "stopped: labels ok=6" in first, demo.tail()
        assert re.search(r"POS price 1\d{5}(-\d+)? .+: \d+\.\d\d → \d+\.\d\d", first), demo.tail()
        with sqlite3.connect(data / "esl.db") as conn:
            pairings = conn.execute("SELECT COUNT(*) FROM jobs WHERE kind = 'pair'").fetchone()[0]
        assert pairings >= 6  # (a pairing whose answer is late under load is tried again)
        assert (data / "simulator" / "demo.json").exists()
        assert problems(first.split("  POS ")[0]) == [], demo.tail(80)  # a quiet start ...
        assert not [line for line in problems(first) if "/status" in line]  # ... and no stray status

        restarted = datetime.now(timezone.utc)
        await start_demo(demo)  # the same command again, on the same data
        assert await finish(demo) == 0
        second = run_log(demo, 2)
        assert "restored 6 labels" in second, demo.tail()
        assert "checked in without its key" not in second
        assert problems(second) == [], demo.tail(80)
        assert "stopped: labels ok=6" in second, demo.tail()
        with sqlite3.connect(data / "esl.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM jobs WHERE kind = 'pair'").fetchone()[0] == pairings
            seen = [datetime.fromisoformat(r[0]) for r in conn.execute("SELECT last_seen FROM labels")]
        assert len(seen) == 6 and all(t >= restarted for t in seen), seen  # every label checked in again


@pytest.mark.parametrize("flags", [["--no-feed", "--feed-interval", "0.5"], ["--feed-interval", "0"]],
                         ids=["no-feed", "interval-0"])
async def test_without_the_feed_an_integrators_price_stays(tmp_path: Path, flags: list[str]) -> None:
    # three products, all three repriced at every feed tick if the feed were on
    async with Processes(tmp_path / "procs") as procs:
        demo = procs.spawn("demo", demo_argv(tmp_path / "store", "--labels", "3", "--feed-size", "3", *flags))
        http_url, headers = await start_demo(demo)
        assert "POS     off" in demo.log
        async with aiohttp.ClientSession() as http:
            async with http.post(http_url + "api/v1/prices", json={"sku": "100110", "price": "1.23"},
                                 headers=headers) as resp:
                assert resp.status == 200, await resp.text()
            await asyncio.sleep(3.5)  # past the default 3 s feed interval, and 7 ticks of 0.5 s
            product = await get_json(http, http_url + "api/v1/products/100110", headers)
            others = [await get_json(http, http_url + f"api/v1/products/{sku}", headers)
                      for sku in ("100100", "100120")]
        assert product["price"] == "1.23", product
        assert all(p["history"][0]["source"] == "demo" for p in others), others  # nobody repriced them
        await demo.stop(grace_s=30)
        assert "POS price" not in demo.log


async def test_after_a_crash_the_labels_carry_on_without_a_replay(tmp_path: Path) -> None:
    """kill -9 in the middle of price changes: the labels come back from their state file,
    whose counters were ahead of use, so the server believes every check-in (no counter
    reused) and nothing needs pairing again."""
    data = tmp_path / "store"
    async with Processes(tmp_path / "procs") as procs:
        demo = procs.spawn("demo", demo_argv(data, "--labels", "6", "--feed-interval", "0.5", "--feed-size", "3"))
        http_url, headers = await start_demo(demo)
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                ok = await get_json(http, http_url + "api/v1/labels?state=ok", headers)
                if ok["total"] == 6:
                    break
                await asyncio.sleep(0.1)
            assert ok["total"] == 6, demo.tail()
        await asyncio.sleep(1.5)  # price changes (and their image jobs) under way
        demo.kill()
        assert "stopped:" not in demo.log  # a crash, not a clean stop
        with sqlite3.connect(data / "esl.db") as conn:
            pairings = conn.execute("SELECT COUNT(*) FROM jobs WHERE kind = 'pair'").fetchone()[0]

        demo.argv += ["--duration", "8"]
        await start_demo(demo)
        assert await finish(demo) == 0
        second = run_log(demo, 2)
        assert "restored 6 labels" in second
        assert problems(second) == [], demo.tail(80)  # no "without its key", no failed authentication
        assert "stopped: labels ok=6" in second, demo.tail()
        with sqlite3.connect(data / "esl.db") as conn:
            assert conn.execute("SELECT COUNT(*) FROM jobs WHERE kind = 'pair'").fetchone()[0] == pairings
