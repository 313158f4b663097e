"""Faults at the exact moment that matters, against the real `esl serve` process and a real Mosquitto.

Each test kills or starves a real process at a point it *observes* (a marker line the server
writes from inside its open ingest transaction, a broker holding a queue for a server that is
away, a file system with no byte left), never after a sleep that may come too early or too
late, and then checks the contract of docs/operations.md "Delivery guarantees": nothing the
server confirmed on ``pos/acks`` is lost, nothing is applied twice, a POS that re-sends what
was not confirmed ends with every update applied exactly once, and a poison message costs
only itself.

The POS is `tests.pos_outbox.OutboxPos` (an ``update_id`` per item, confirmations collected);
what was applied is read from the server's SQLite file on a read-only connection (the price
history: one row per applied price, each price in these tests used once).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from eslserver import faults
from eslserver.config import Settings, load_settings
from eslserver.server import SYSTEM, Server
from eslserver.topics import Topics
from tests.brokers import MosquittoBroker
from tests.dbread import read_only
from tests.pos_outbox import OutboxPos
from tests.processes import SERVE_READY, ChildProcess, Processes, esl_argv
from tests.test_health import _fill, small_disk  # noqa: F401  (a fixture: a tmpfs the test mounts, root only)

STORE = "kill"
TOPICS = Topics("esl", STORE)
HOOK = "ingest.in_transaction"
SEEDED = 40
"""Products K000..K039 at 1.00 (seq 1), written before the server starts."""


def _seed_records() -> list[dict[str, Any]]:
    return [{"sku": f"K{i:03d}", "name": f"Towar {i}", "price": "1.00", "seq": 1} for i in range(SEEDED)]


@dataclass
class Rig:
    procs: Processes
    broker: MosquittoBroker
    server: ChildProcess
    settings: Settings
    env: dict[str, str]
    pos: OutboxPos
    http_port: int = 0

    @property
    def db(self) -> Path:
        return self.settings.database_path

    def history(self, sku: str) -> list[tuple[str, int | None]]:
        """(price, seq) of every price-history row of `sku`, in the order written."""
        return [(r["price"], r["seq"]) for r in read_only(self.db, "SELECT price, seq FROM price_history "
                                                              "WHERE store = ? AND sku = ? ORDER BY id", (STORE, sku))]

    def product(self, sku: str) -> dict[str, Any] | None:
        rows = read_only(self.db, "SELECT record, seq FROM products WHERE store = ? AND sku = ?", (STORE, sku))
        return None if not rows else {**json.loads(rows[0]["record"]), "_seq": rows[0]["seq"]}

    async def start_server(self, **env: str) -> int:
        """(Re)start `esl serve` with `env` added for this start only; its HTTP port."""
        self.server.env = {**self.procs.env, **self.env, **env}
        ready = await self.server.start(ready=SERVE_READY, timeout=60)
        assert ready is not None
        return int(ready[1])

    async def until_log(self, child: ChildProcess, text: str, *, since: int, timeout: float = 30.0) -> None:
        """Wait until `child` writes `text` after byte `since` of its log."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while text not in child.log_path.read_bytes()[since:].decode(errors="replace"):
            if not child.running:
                raise AssertionError(f"{child.name} exited before writing {text!r}\n{child.tail()}")
            if loop.time() > deadline:
                raise AssertionError(f"{child.name} did not write {text!r} within {timeout} s\n{child.tail()}")
            await asyncio.sleep(0.02)

    async def until_errors(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Wait until `count` messages came on pos/errors; their bodies."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.pos.errors) < count:
            if loop.time() > deadline:
                raise AssertionError(f"{len(self.pos.errors)} of {count} pos/errors messages within {timeout} s: "
                                     f"{self.pos.errors}\n{self.server.tail()}")
            await asyncio.sleep(0.02)
        return [body for _, body in self.pos.errors]


async def _seed(settings: Settings) -> None:
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        result = await server.ingest.submit(_seed_records(), source="cli", actor=SYSTEM)
        assert not result.errors, result.errors


@asynccontextmanager
async def rig(tmp_path: Path, *, data: Path | None = None, persistence: bool = False,
              **server_env: str) -> AsyncIterator[Rig]:
    """Mosquitto, the seeded `esl serve` (with `server_env` for its first start) and a POS."""
    broker = MosquittoBroker(persistence=persistence, autosave_interval_s=1)
    await broker.start()
    try:
        async with Processes(tmp_path / "procs") as procs:
            env = {"ESL_DATA_DIR": str(data or tmp_path / "data"), "ESL_BROKER_URL": broker.url, "ESL_STORE": STORE,
                   "ESL_HTTP_PORT": "0", "ESL_RENDER_WORKERS": "1", "ESL_LOG_LEVEL": "info"}
            settings = load_settings(None, environ=env)
            await _seed(settings)
            server = procs.spawn("serve", esl_argv("serve"))
            r = Rig(procs, broker, server, settings, env, OutboxPos(broker.url, TOPICS, client_id="test-kill-pos"))
            r.http_port = await r.start_server(**server_env)
            async with r.pos:
                yield r
    finally:
        broker.kill()
        await broker.aclose()


# -- the hook itself ----------------------------------------------------------------------------------


def test_every_fault_point_is_marked_in_the_code_exactly_once() -> None:
    """A point no code reaches would let a kill test pass without ever pausing."""
    root = Path(__file__).resolve().parents[1] / "eslserver"
    sources = "\n".join(p.read_text() for p in root.rglob("*.py") if p.name != "faults.py")
    for point in faults.POINTS:
        assert sources.count(f'faults.reached("{point}")') == 1, point


@pytest.mark.parametrize(("environ", "message"), [
    ({"ESL_FAULT_HOOK": "ingest.in_transction"}, "names no fault point: 'ingest.in_transction'"),
    ({"ESL_FAULT_HOOK": HOOK, "ESL_FAULT_HOOK_PAUSE_S": "soon"}, "must be a number of seconds, got 'soon'"),
    ({"ESL_FAULT_HOOK": HOOK, "ESL_FAULT_HOOK_PAUSE_S": "-1"}, "finite number >= 0, got '-1'"),
    ({"ESL_FAULT_HOOK": HOOK, "ESL_FAULT_HOOK_PAUSE_S": "inf"}, "finite number >= 0, got 'inf'"),
])
def test_a_misspelt_hook_or_pause_is_refused_naming_the_value(environ: dict[str, str], message: str) -> None:
    with pytest.raises(faults.FaultHookError, match=message.replace("(", r"\(").replace(")", r"\)")):
        faults.hook_from_environ(environ)


def test_hook_settings_are_read_from_the_environment() -> None:
    assert faults.hook_from_environ({}) == (None, 30.0)
    assert faults.hook_from_environ({"ESL_FAULT_HOOK": ""}) == (None, 30.0)
    assert faults.hook_from_environ({"ESL_FAULT_HOOK": HOOK, "ESL_FAULT_HOOK_PAUSE_S": "0.5"}) == (HOOK, 0.5)


def test_an_armed_point_writes_its_marker_and_pauses_only_there() -> None:
    """In a process of its own (the hook is read once, at import): the other point passes at
    once, the armed one writes the marker line and holds for the pause."""
    code = ("import asyncio, time\n"
            "from eslserver import faults\n"
            "async def main():\n"
            "    t = time.monotonic(); await faults.reached('elsewhere'); print('other', time.monotonic() - t)\n"
            f"    t = time.monotonic(); await faults.reached({HOOK!r}); print('armed', time.monotonic() - t)\n"
            "asyncio.run(main())\n")
    env = {**os.environ, "ESL_FAULT_HOOK": HOOK, "ESL_FAULT_HOOK_PAUSE_S": "0.4"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"FAULT-HOOK {HOOK} pid={_pid_in(done.stderr)}\n"
    times = dict(line.split() for line in done.stdout.splitlines())
    assert float(times["other"]) < 0.05 and 0.4 <= float(times["armed"]) < 5, times


def _pid_in(marker: str) -> str:
    return marker.rsplit("pid=", 1)[-1].strip()


async def test_an_unarmed_point_costs_no_scheduling() -> None:
    """Unset (as in this test process), `reached` finishes without yielding to the loop."""
    assert os.environ.get("ESL_FAULT_HOOK") is None
    ran = []
    asyncio.get_running_loop().call_soon(ran.append, 1)
    for _ in range(1000):
        await faults.reached(HOOK)
    assert ran == []


# -- a. kill -9 while an ingest transaction is open ---------------------------------------------------


async def test_kill_9_inside_the_ingest_transaction_applies_the_message_once_after_restart(tmp_path: Path) -> None:
    async with rig(tmp_path, ESL_FAULT_HOOK=HOOK, ESL_FAULT_HOOK_PAUSE_S="120") as r:
        since = r.server.log_path.stat().st_size
        items = [{"sku": "K000", "price": "2.00", "seq": 2, "update_id": "a-K000"},
                 {"sku": "NEW1", "name": "Nowy towar", "price": "5.00", "seq": 1, "update_id": "a-NEW1"}]
        await r.pos.publish(items)
        await r.until_log(r.server, f"FAULT-HOOK {HOOK} pid={r.server.pid}", since=since)
        # the transaction is open (both items written, nothing committed): nobody sees anything yet
        r.server.kill()
        assert r.history("K000") == [("1.00", 1)]
        assert r.product("K000") is not None and r.product("K000")["price"] == "1.00"  # type: ignore[index]
        assert r.product("NEW1") is None and r.history("NEW1") == []
        assert not read_only(r.db, "SELECT 1 FROM audit WHERE target = 'NEW1'")
        assert r.pos.confirmations == {} and r.pos.errors == []
        # never acknowledged, so the broker hands it to the restarted server: no re-send by the POS
        await r.start_server()
        await r.pos.until_confirmed(["a-K000", "a-NEW1"], timeout=30)
        assert (r.pos.status("a-K000"), r.pos.status("a-NEW1")) == ("applied", "applied")
        assert r.history("K000") == [("1.00", 1), ("2.00", 2)]
        assert r.history("NEW1") == [("5.00", 1)]
        # a POS that missed the confirmation re-sends: recognised, not applied again
        await r.pos.publish(items)
        await _until(lambda: all(len(r.pos.confirmations[u]) == 2 for u in ("a-K000", "a-NEW1")), "second answer")
        assert [c.status for c in r.pos.confirmations["a-NEW1"]] == ["applied", "duplicate"]
        assert r.pos.confirmations["a-K000"][1].status in ("duplicate", "stale")
        assert r.history("K000") == [("1.00", 1), ("2.00", 2)] and r.history("NEW1") == [("5.00", 1)]


async def _until(check: Any, what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


# -- b. kill -9 of the broker holding a queue for the server -------------------------------------------

QUEUED = 30


@pytest.mark.parametrize("persistence", [False, True], ids=["memory-only", "persistence-autosave-1s"])
async def test_broker_killed_with_messages_queued_for_the_server_loses_nothing(
        tmp_path: Path, persistence: bool) -> None:
    async with rig(tmp_path, persistence=persistence) as r:
        assert await r.server.stop() == 0  # a clean stop: its persistent session keeps queueing
        updates = [{"sku": f"K{i:03d}", "price": f"{2 + i / 100:.2f}", "seq": 2, "update_id": f"b-{i}"}
                   for i in range(QUEUED)]
        for update in updates:  # one message each; the broker acknowledged every one of them
            await r.pos.publish([update])
        if persistence:
            await asyncio.sleep(r.broker.autosave_interval_s + 1.0)  # an autosave since the last of them
        r.broker.kill()
        await r.broker.start()
        await r.start_server()
        ids = [u["update_id"] for u in updates]
        # with the queue saved, the POS waits long enough for a server restarted on a busy machine to
        # work through it before it re-sends anything; without, it re-sends after 3 s as a POS would
        resent = await r.pos.until_confirmed(ids, timeout=45, resend_after=15.0 if persistence else 3.0)
        # what the test claims happened did happen: the queue was lost (memory only) and the POS's
        # re-sends filled the gap, or it was saved and the broker alone delivered it
        assert resent == (0 if persistence else QUEUED), resent
        assert {r.pos.status(u) for u in ids} == {"applied"}
        for update in updates:
            assert r.history(update["sku"]) == [("1.00", 1), (update["price"], 2)], update


# -- c. a full disk under the real process ------------------------------------------------------------


async def test_a_price_sent_while_the_disk_is_full_is_applied_once_when_space_is_freed(
        tmp_path: Path, small_disk: Path) -> None:
    async with rig(tmp_path, data=small_disk / "data") as r:
        filler = _fill(small_disk)
        await r.pos.publish([{"sku": "K001", "price": "3.33", "seq": 2, "update_id": "c-K001"}])
        await asyncio.sleep(3.0)  # the server tries (and retries) meanwhile
        assert r.server.running, r.server.tail()
        assert r.pos.confirmations == {} and r.pos.errors == [], (r.pos.acks, r.pos.errors)
        assert r.history("K001") == [("1.00", 1)]
        filler.unlink()
        # not lost: the server still holds it unacknowledged and applies it; the POS sends nothing
        await r.pos.until_confirmed(["c-K001"], timeout=30)
        assert r.pos.status("c-K001") == "applied"
        assert r.pos.outbox["c-K001"].sends == 1
        await asyncio.sleep(0.5)  # a second application would show up now
        assert r.history("K001") == [("1.00", 1), ("3.33", 2)]
        assert len(r.pos.confirmations["c-K001"]) == 1


# -- d. poison messages --------------------------------------------------------------------------------


async def test_poison_messages_cost_only_themselves_and_the_server_keeps_serving(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        # garbage: not JSON, not UTF-8
        await r.pos.publish_raw(b"\xff\xfe\x00{garbage")
        assert len((await r.until_errors(1))[0]["errors"]) == 1
        # 2 MiB of otherwise valid JSON: refused for its size, never parsed or stored
        big = json.dumps([{"sku": "BIG", "price": "1.00", "update_id": "d-big",
                           "attributes": {"blob": "x" * (2 << 20)}}]).encode()
        await r.pos.publish_raw(big)
        body = (await r.until_errors(2))[1]
        assert len(body["errors"]) == 1
        text = json.dumps(body)
        assert str(len(big)) in text or "MiB" in text or "bytes" in text, body
        # a batch: good, lone surrogate, bytes that are not UTF-8 inside a string, good
        good = [{"sku": "K010", "price": "4.10", "seq": 2, "update_id": "d-K010"},
                {"sku": "K013", "price": "4.13", "seq": 2, "update_id": "d-K013"}]
        batch = (b"[" + json.dumps(good[0]).encode()
                 + b', {"sku": "K011", "price": "4.11", "seq": 2, "update_id": "d-K011", "name": "\\ud800"}'
                 + b', {"sku": "K012", "price": "4.12", "seq": 2, "update_id": "d-K012", "name": "z\xff\xfel"}, '
                 + json.dumps(good[1]).encode() + b"]")
        await r.pos.publish_raw(batch)
        await r.pos.until_confirmed(["d-K010", "d-K013"], timeout=15)
        body = (await r.until_errors(3))[2]
        assert sorted(e["index"] for e in body["errors"]) == [1, 2], body
        assert (r.pos.status("d-K010"), r.pos.status("d-K013")) == ("applied", "applied")
        ack = next(a for _, a in r.pos.acks if any(i["update_id"] == "d-K010" for i in a["accepted"]))
        assert [i["index"] for i in ack["accepted"]] == [0, 3] and ack["rejected"] == 2, ack
        assert r.history("K010") == [("1.00", 1), ("4.10", 2)] and r.history("K013") == [("1.00", 1), ("4.13", 2)]
        assert r.history("K011") == [("1.00", 1)] and r.history("K012") == [("1.00", 1)]
        assert r.product("BIG") is None and "d-big" not in r.pos.confirmations
        # still serving: HTTP answers, and the next good message is applied
        assert r.server.running, r.server.tail()
        with urllib.request.urlopen(f"http://127.0.0.1:{r.http_port}/healthz", timeout=10) as reply:
            assert reply.status == 200
        await r.pos.publish([{"sku": "K020", "price": "7.20", "seq": 2, "update_id": "d-K020"}])
        await r.pos.until_confirmed(["d-K020"], timeout=15)
        assert r.history("K020") == [("1.00", 1), ("7.20", 2)]
