"""The server pipeline end to end, with real processes: time-to-shelf, repricing rate, RSS.

Everything runs as it would in a store: Mosquitto, ``esl serve``, ``esl gateway --radio
sim://…`` and ``esl simulate`` (zero radio delay, always-listening labels) are separate
processes; this process is only the POS (publishing on MQTT) and the observer (the retained
label-state topic and the server's SQLite file, read-only). Three measurements:

1. time-to-shelf: POS publish → the label state showing the label's own report of the new
   image, at a sustained ``--rate`` updates/s (one per message) over ``--labels`` labels;
   p50 / p99. Baseline in the same run: one label updated the same way with nothing else
   going on (the unloaded floor of the whole chain).
2. repricing: one POS batch repricing every label of a ``--chain`` store; labels/s from the
   publish to the last label confirming. Baseline in the same run: rendering alone, the
   same templates and products in this process on one core (labels/s).
3. server RSS with ``--rss-labels`` labels (and as many products) in the database, after
   startup, a label listing and the dashboard summary. Baseline: a Python process that
   only imports the server.

Usage: ``python3 -m benchmarks.pipeline [--quick]``. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

STORE = "demo"
GATEWAY = "gw1"
_SIMULATED_LABELS = "eslserver-simulator-0"
"""The factory secret of `esl simulate`'s labels (seed 0); `esl serve` needs it given explicitly."""


def _free_port() -> int:
    from eslserver.broker import free_port
    return free_port()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as fh:
            return [int(p) for p in fh.read().split()]
    except OSError:
        return []


class _Proc:
    """A child process that is always stopped (SIGTERM, then SIGKILL)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.popen = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)

    def line_with(self, needle: str, timeout: float = 60.0) -> str:
        assert self.popen.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline()
            if not line:
                break
            if needle in line:
                return line
        raise RuntimeError(f"{self.popen.args[:3]} did not print {needle!r}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _esl() -> list[str]:
    return [sys.executable, "-c", "from eslserver.cli import main; main()"]


def _records(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    names = ["Mleko 3,2% 1 l", "Chleb żytni 500 g", "Masło extra 200 g", "Jogurt naturalny 400 g",
             "Kawa mielona 250 g", "Sok jabłkowy 1 l", "Ser gouda 150 g", "Makaron penne 500 g"]
    return [{"sku": f"P{i:06d}", "name": f"{names[i % len(names)]} #{i}",
             "price": f"{rng.randint(99, 4999) / 100:.2f}", "seq": 1,
             "unit": {"size": 500, "measure": "g"}} for i in range(n)]


async def _seed(data_dir: Path, count: int, *, render: bool = True) -> list[tuple[str, str]]:
    """Products and labels bound to them (label i ↔ product i), written by the server's own code."""
    from eslserver.config import load_settings
    from eslserver.server import SYSTEM, Server
    from eslserver.store.labels import dirty_generation
    from eslserver.timeutil import iso, utcnow
    from simulator.store import label_address

    settings = load_settings(None, environ={}, overrides={"data_dir": data_dir})
    pairs = [(label_address(i + 1), f"P{i:06d}") for i in range(count)]
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        await server.add_identity("gateway", GATEWAY, store=STORE, reset=True)  # registered: the server listens
        records = _records(count)
        for i in range(0, count, 1000):  # a POS message holds at most 1000 items
            result = await server.ingest.submit(records[i:i + 1000], source="bench", actor=SYSTEM)
            assert not result.errors, result.errors[:3]
        now = iso(utcnow())
        async with server.db.transaction() as conn:
            await conn.execute("UPDATE labels SET dirty = 0")
            await conn.executemany(
                "INSERT INTO labels (mac, store, sku, model, gateway, state, updated_at, dirty) "
                "VALUES (?, ?, ?, '2.9-bwry', ?, ?, ?, ?)",
                [(mac, STORE, sku, GATEWAY, "pending" if render else "ok", now, dirty_generation() if render else 0)
                 for mac, sku in pairs])
    return pairs


def _db_states(db: Path) -> dict[str, tuple[str, str | None, str | None]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        return {r[0]: (r[1], r[2], r[3]) for r in
                conn.execute("SELECT mac, state, expected_hash, displayed_hash FROM labels")}


async def _wait_converged(db: Path, macs: list[str], since: dict[str, str | None] | None = None,
                          timeout: float = 600.0) -> float:
    """Seconds until every label shows its expected image (and, with `since`, a new one)."""
    t0 = time.perf_counter()
    while True:
        states = await asyncio.to_thread(_db_states, db)
        done = sum(1 for m in macs if (st := states.get(m)) and st[0] == "ok" and st[1] and st[1] == st[2]
                   and (since is None or st[2] != since.get(m)))
        if done == len(macs):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"only {done}/{len(macs)} labels converged in {timeout} s")
        await asyncio.sleep(0.1)


class _Store:
    """mosquitto + esl serve + esl simulate + esl gateway for `labels` seeded labels."""

    def __init__(self, labels: int, *, concurrency: int, workers: int, in_flight: int) -> None:
        self.labels = labels
        self.concurrency = concurrency
        self.workers = workers
        self.in_flight = in_flight
        self.tmp = tempfile.TemporaryDirectory(prefix="esl-bench-")
        self.data = Path(self.tmp.name) / "data"
        self.procs: list[_Proc] = []
        self.broker: Any = None

    async def __aenter__(self) -> _Store:
        from tests.brokers import MosquittoBroker
        self.pairs = await _seed(self.data, self.labels)
        self.broker = MosquittoBroker(port=_free_port())
        await self.broker.start()
        self.url = f"mqtt://127.0.0.1:{self.broker.port}"
        sim_port, self.http_port = _free_port(), _free_port()
        sim = _Proc([*_esl(), "simulate", "--labels", str(self.labels), "--always-listening", "--wake-interval", "0",
                     "--listen", f"127.0.0.1:{sim_port}", "--summary-interval", "3600"])
        self.procs.append(sim)
        sim.line_with("listening on")
        env = {"ESL_DATA_DIR": str(self.data), "ESL_BROKER_URL": self.url, "ESL_HTTP_PORT": str(self.http_port),
               "ESL_RENDER_WORKERS": str(self.workers), "ESL_MAX_IN_FLIGHT": str(self.in_flight),
               "ESL_LOG_LEVEL": "warning", "ESL_DEBOUNCE_MS": "10", "ESL_FACTORY_SECRET": _SIMULATED_LABELS}
        self.server = _Proc([*_esl(), "serve"], env)
        self.procs.append(self.server)
        self.server.line_with("eslserver: http://")
        from tests.processes import trust_gateway  # the operator's one-time registration of the gateway
        trust = await trust_gateway(self.data, self.data / "gw", STORE, GATEWAY)
        self.procs.append(_Proc([*_esl(), "gateway", "--broker", self.url, "--radio", f"sim://127.0.0.1:{sim_port}",
                                 "--store", STORE, "--id", GATEWAY, "--data", str(self.data / "gw"),
                                 "--concurrency", str(self.concurrency), *trust]))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        if self.broker is not None:
            await self.broker.stop()
        self.tmp.cleanup()

    @property
    def db(self) -> Path:
        return self.data / "esl.db"


async def time_to_shelf(labels: int, rate: float, seconds: float) -> dict[str, Any]:
    from eslserver.mqtt import Message, MqttConnection, MqttSettings
    from eslserver.topics import Kind, Topics

    async with _Store(labels, concurrency=64, workers=1, in_flight=128) as store:
        macs = [m for m, _ in store.pairs]
        await _wait_converged(store.db, macs)
        shown = {m: st[2] for m, st in (await asyncio.to_thread(_db_states, store.db)).items()}
        sent: dict[str, float] = {}
        latencies: list[float] = []
        floor: list[float] = []

        async def on_state(msg: Message) -> None:
            st = json.loads(msg.payload)
            mac = st["mac"]
            if mac in sent and st["state"] == "ok" and st["displayed_hash"] == st["expected_hash"] \
                    and st["displayed_hash"] != shown.get(mac):
                latencies.append(time.perf_counter() - sent.pop(mac))
                shown[mac] = st["displayed_hash"]

        sub = MqttConnection(MqttSettings.from_url(store.url), client_id="bench-observer", clean_session=True)
        topics = Topics("esl", STORE)
        sub.subscribe(topics.filter(Kind.LABEL_STATE), on_state, qos=0, concurrency=1)
        async with sub, MqttConnection(MqttSettings.from_url(store.url), client_id="bench-pos",
                                       clean_session=False) as pos:
            await sub.connected.wait()
            await pos.connected.wait()
            await asyncio.sleep(1.0)  # retained states delivered; quiet
            topic = topics.pos_prices
            seq = 10
            # the floor: one update at a time, nothing else going on
            for i in range(10):
                mac, sku = store.pairs[i]
                seq += 1
                sent[mac] = time.perf_counter()
                await pos.publish(topic, json.dumps({"sku": sku, "price": f"{1 + (seq % 4999) / 100:.2f}", "seq": seq}))
                t_end = time.perf_counter() + 5
                while mac in sent and time.perf_counter() < t_end:
                    await asyncio.sleep(0.002)
                if latencies:
                    floor.append(latencies.pop())
            latencies.clear()
            sent.clear()
            # sustained load: `rate` messages a second, each one SKU, round robin
            total = int(rate * seconds)
            tasks = []
            t0 = time.perf_counter()
            for k in range(total):
                due = t0 + k / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                mac, sku = store.pairs[k % labels]
                seq += 1
                sent[mac] = time.perf_counter()
                tasks.append(asyncio.create_task(pos.publish(
                    topic, json.dumps({"sku": sku, "price": f"{1 + (seq % 4999) / 100:.2f}", "seq": seq}))))
            achieved = total / (time.perf_counter() - t0)
            await asyncio.gather(*tasks)
            t_end = time.perf_counter() + 30
            while sent and time.perf_counter() < t_end:
                await asyncio.sleep(0.05)
        lat = sorted(latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

        return {"labels": labels, "rate": rate, "achieved_rate": round(achieved, 1), "updates": total,
                "confirmed": len(lat), "lost": len(sent), "p50_ms": round(pct(0.50), 1), "p99_ms": round(pct(0.99), 1),
                "max_ms": round(lat[-1] * 1000, 1) if lat else None,
                "floor_p50_ms": round(statistics.median(floor) * 1000, 1) if floor else None}


async def repricing(labels: int, workers: int) -> dict[str, Any]:
    from eslserver.mqtt import MqttConnection, MqttSettings
    from eslserver.topics import Topics

    async with _Store(labels, concurrency=256, workers=workers, in_flight=512) as store:
        macs = [m for m, _ in store.pairs]
        initial = await _wait_converged(store.db, macs)
        before = {m: st[2] for m, st in (await asyncio.to_thread(_db_states, store.db)).items()}
        async with MqttConnection(MqttSettings.from_url(store.url), client_id="bench-pos", clean_session=False) as pos:
            await pos.connected.wait()
            old = {r["sku"]: Decimal(r["price"]) for r in _records(labels)}
            batch = [{"sku": sku, "price": str(old[sku] + Decimal("0.01")), "seq": 2} for _, sku in store.pairs]
            t0 = time.perf_counter()
            for i in range(0, len(batch), 1000):
                await pos.publish(Topics("esl", STORE).pos_prices, json.dumps(batch[i:i + 1000]))
            elapsed = (time.perf_counter() - t0) + await _wait_converged(store.db, macs, since=before)
    render_rate = _render_only_rate(min(labels, 2000))
    rate = labels / elapsed
    return {"labels": labels, "seconds": round(elapsed, 2), "labels_per_s": round(rate, 1),
            "initial_pair_and_show_s": round(initial, 1), "render_only_labels_per_s_one_core": round(render_rate, 1),
            "ratio_to_render_only": round(rate / render_rate, 2)}


def _render_only_rate(n: int) -> float:
    from render.batch import render_batch
    from render.templates import load_template

    records = [{**r, "price": f"{(i % 900) / 100 + 1:.2f}"} for i, r in enumerate(_records(n))]
    template = load_template("shelf-2.9")
    render_batch(template, records[:64])
    t0 = time.process_time()
    render_batch(template, records)
    return n / (time.process_time() - t0)


async def server_rss(labels: int) -> dict[str, Any]:
    from tests.brokers import MosquittoBroker

    with tempfile.TemporaryDirectory(prefix="esl-bench-rss-") as tmp:
        data = Path(tmp) / "data"
        await _seed(data, labels, render=False)
        broker = MosquittoBroker(port=_free_port())
        await broker.start()
        port = _free_port()
        server = _Proc([*_esl(), "serve"], {"ESL_DATA_DIR": str(data), "ESL_HTTP_PORT": str(port),
                                            "ESL_BROKER_URL": f"mqtt://127.0.0.1:{broker.port}",
                                            "ESL_LOG_LEVEL": "warning", "ESL_FACTORY_SECRET": _SIMULATED_LABELS})
        base = _Proc([sys.executable, "-c", "import eslserver.server, time; print('ready', flush=True); time.sleep(600)"])
        try:
            server.line_with("eslserver: http://")
            base.line_with("ready")
            from eslserver.auth import create_token
            from eslserver.db.sqlite import SqliteDatabase
            async with SqliteDatabase(data / "esl.db") as db:
                token = await create_token(db, "admin", "bench")
            after_start = _rss_mib(server.popen.pid)
            for path in ("/api/v1/labels?limit=100", "/api/v1/summary", "/api/v1/labels?state=ok&limit=500",
                         "/api/v1/products?limit=100"):
                req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"})
                try:
                    await asyncio.to_thread(lambda r=req: urllib.request.urlopen(r, timeout=60).read())
                except urllib.error.HTTPError as exc:
                    raise RuntimeError(f"GET {path}: {exc.code} {exc.read()[:300]!r}") from None
            await asyncio.sleep(3)  # a housekeeping round over all labels
            server_mib = _rss_mib(server.popen.pid)
            workers_mib = sum(_rss_mib(c) for c in _children(server.popen.pid))
            base_mib = _rss_mib(base.popen.pid)
        finally:
            server.stop()
            base.stop()
            await broker.stop()
    return {"labels": labels, "server_rss_mib": round(server_mib, 1), "after_start_mib": round(after_start, 1),
            "render_workers_rss_mib": round(workers_mib, 1), "import_only_baseline_mib": round(base_mib, 1),
            "ratio_to_baseline": round(server_mib / base_mib, 2)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"benchmark": "pipeline"}
    out["time_to_shelf"] = await time_to_shelf(args.labels, args.rate, args.seconds)
    t = out["time_to_shelf"]
    print(f"time-to-shelf  {t['labels']} labels, {t['achieved_rate']}/s for {t['updates']} updates: "
          f"p50 {t['p50_ms']} ms, p99 {t['p99_ms']} ms, max {t['max_ms']} ms, confirmed {t['confirmed']}, "
          f"lost {t['lost']}; unloaded floor p50 {t['floor_p50_ms']} ms   (target p50 < 100, p99 < 500)", flush=True)
    out["repricing"] = await repricing(args.chain, args.workers)
    r = out["repricing"]
    print(f"repricing      {r['labels']} labels in {r['seconds']} s = {r['labels_per_s']} labels/s "
          f"(render only, one core: {r['render_only_labels_per_s_one_core']}/s; ratio {r['ratio_to_render_only']})"
          f"   (target >= 2000/s)", flush=True)
    out["rss"] = await server_rss(args.rss_labels)
    m = out["rss"]
    print(f"server RSS     {m['labels']} labels: {m['server_rss_mib']} MiB (render workers {m['render_workers_rss_mib']} "
          f"MiB; import-only baseline {m['import_only_baseline_mib']} MiB, ratio {m['ratio_to_baseline']})"
          f"   (target < 500 MB)", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labels", type=int, default=1000, help="labels for the time-to-shelf run")
    ap.add_argument("--rate", type=float, default=200.0, help="updates per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to sustain the rate")
    ap.add_argument("--chain", type=int, default=10_000, help="labels repriced at once")
    ap.add_argument("--workers", type=int, default=2, help="render processes for the repricing run")
    ap.add_argument("--rss-labels", type=int, default=100_000)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the benchmark runs")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every child process is stopped
    if args.quick:
        args.labels, args.seconds, args.rate, args.chain, args.rss_labels = 100, 3.0, 50.0, 300, 2000
    print(json.dumps(asyncio.run(main_async(args))))


if __name__ == "__main__":
    main()
