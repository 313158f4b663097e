"""Repricing a chain's stores with several server instances on one PostgreSQL database,
against one instance on SQLite.

Real processes as in production: Mosquitto, per store an ``esl simulate`` (zero radio delay,
always listening) and an ``esl gateway``, and 1, 2 or 3 ``esl serve`` instances (``--instance
sN``, ``mqtt_shared``) serving every store, on a fresh PostgreSQL database; the baseline in the
same run is one instance on SQLite. For each: the labels of every store are seeded and shown
once, then the POS of every store reprices all its labels in one batch, and the clock runs from
the first publish to the last label reporting its new image. Printed: labels/s, the ratio to the SQLite baseline, and the CPU seconds per label
of every process (each server with its render processes, each gateway and simulator, the
PostgreSQL server with every backend, live or gone), read from /proc before and after the repricing.

The machine has 2 cores: more instances cannot draw faster than 2 cores do, so what tells is
the CPU per label of each part (what a bigger machine or more machines would scale).

Usage: ``python3 -m benchmarks.chain [--stores 2] [--labels 5000] [--instances 1,2,3] [--quick]``
(``--labels`` per store).
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

from benchmarks.pipeline import _SIMULATED_LABELS, GATEWAY, STORE, _children, _esl, _free_port, _Proc, _records

_TICK = os.sysconf("SC_CLK_TCK")


def _drain(proc: _Proc) -> _Proc:
    """Read what `proc` writes from now on, in a thread, so that a full pipe never stops it."""
    out = proc.popen.stdout
    if out is not None:
        threading.Thread(target=lambda: [None for _ in out], daemon=True).start()
    return proc


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants (render processes)."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
        todo.extend(_children(p))
    return total


def _postgres_cpu_s() -> float:
    """CPU seconds of the PostgreSQL server: its postmaster with every child it has reaped
    (``cutime``/``cstime``: the backends of connections that closed) plus every live child (the
    backends of open connections, the writers). A delta of this is the database's share of the
    work whatever connections came and went meanwhile."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm", encoding="ascii") as fh:
                if fh.read().strip() != "postgres":
                    continue
            with open(f"/proc/{entry}/stat", encoding="ascii") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parent = int(fields[1])
        try:
            with open(f"/proc/{parent}/comm", encoding="ascii") as fh:
                child = fh.read().strip() == "postgres"
        except OSError:
            child = False
        total += (int(fields[11]) + int(fields[12])) / _TICK  # its own time
        if not child:  # the postmaster: what its finished children used
            total += (int(fields[13]) + int(fields[14])) / _TICK
    return total


def _store(n: int) -> str:
    return STORE if n == 0 else f"{STORE}{n + 1}"


async def _wal_lsn(url: str) -> int:
    """PostgreSQL's write-ahead log position in bytes (what the server has written to disk, all
    databases: the benchmark's is the only busy one)."""
    import asyncpg
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')"))
    finally:
        await conn.close()


async def _seed(settings: Any, count: int, stores: int) -> dict[str, list[tuple[str, str]]]:
    """Per store: products and labels bound to them (label i ↔ product i; each store's labels
    numbered on from the last one's), written by the server's own code."""
    from eslserver.server import SYSTEM, Server
    from eslserver.store.labels import dirty_generation
    from eslserver.stores_admin import add_store
    from eslserver.timeutil import iso, utcnow
    from simulator.store import label_address

    out: dict[str, list[tuple[str, str]]] = {}
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        for n in range(1, stores):
            await add_store(server.db, settings, _store(n), name=f"Sklep {n + 1}", currency="PLN", actor=SYSTEM)
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:  # serves them all
        for n in range(stores):
            store = _store(n)
            await server.add_identity("gateway", GATEWAY, store=store, reset=True)
            pairs = out[store] = [(label_address(n * count + i + 1), f"P{i:06d}") for i in range(count)]
            records = _records(count)
            for i in range(0, count, 1000):
                result = await server.stores[store].ingest.submit(records[i:i + 1000], source="bench", actor=SYSTEM)
                assert not result.errors, result.errors[:3]
            now = iso(utcnow())
            async with server.db.transaction() as conn:
                await conn.executemany(
                    "INSERT INTO labels (mac, store, sku, model, gateway, state, updated_at, dirty) "
                    "VALUES (?, ?, ?, '2.9-bwry', ?, 'pending', ?, ?)",
                    [(mac, store, sku, GATEWAY, now, dirty_generation()) for mac, sku in pairs])
    return out


async def _states(db: Any) -> dict[str, tuple[str, str | None, str | None]]:
    return {r["mac"]: (r["state"], r["expected_hash"], r["displayed_hash"])
            for r in await db.read("SELECT mac, state, expected_hash, displayed_hash FROM labels")}


async def _converged(db: Any, macs: list[str], since: dict[str, str | None] | None, timeout: float) -> float:
    """Seconds until every label shows its expected image (and, with `since`, a new one): the
    observer reads the database twice a second on one connection (a small, steady cost)."""
    t0 = time.perf_counter()
    while True:
        states = await _states(db)
        done = sum(1 for m in macs if (st := states.get(m)) and st[0] == "ok" and st[1] and st[1] == st[2]
                   and (since is None or st[2] != since.get(m)))
        if done == len(macs):
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise RuntimeError(f"only {done}/{len(macs)} labels converged in {timeout} s")
        await asyncio.sleep(0.5)


async def run(labels: int, instances: int, database_url: str | None, stores: int) -> dict[str, Any]:
    """One configuration: seed, show once, reprice every label; its figures."""
    from eslserver.config import load_settings
    from eslserver.db.database import open_database
    from eslserver.mqtt import MqttConnection, MqttSettings
    from eslserver.topics import Topics
    from tests.brokers import MosquittoBroker
    from tests.processes import trust_gateway

    with tempfile.TemporaryDirectory(prefix="esl-chain-") as tmp:
        data = Path(tmp) / "data"
        # labels that check in once (always listening) must not be taken for offline while a big
        # store is shown the first time: check-ins expected once an hour
        env = {"ESL_DATA_DIR": str(data), "ESL_STORE": STORE, "ESL_RENDER_WORKERS": "1", "ESL_MAX_IN_FLIGHT": "512",
               "ESL_CHECKIN_INTERVAL_S": "3600",
               "ESL_LOG_LEVEL": "warning", "ESL_DEBOUNCE_MS": "10", "ESL_FACTORY_SECRET": _SIMULATED_LABELS,
               "ESL_HTTP_PORT": "0"}
        if database_url is not None:
            env |= {"ESL_DATABASE_URL": database_url, "ESL_MQTT_SHARED": "true"}
        settings = load_settings(None, environ=env)
        seeded = await _seed(settings, labels, stores)
        macs = [m for pairs in seeded.values() for m, _ in pairs]
        broker = MosquittoBroker(port=_free_port())
        await broker.start()
        env["ESL_BROKER_URL"] = url = f"mqtt://127.0.0.1:{broker.port}"
        procs: list[_Proc] = []
        observer = None
        try:
            sims: dict[str, _Proc] = {}
            sim_ports: dict[str, int] = {}
            for n, store in enumerate(seeded):
                sim_ports[store] = _free_port()
                sims[store] = _Proc([*_esl(), "simulate", "--labels", str(labels), "--always-listening",
                                     "--wake-interval", "0", "--listen", f"127.0.0.1:{sim_ports[store]}",
                                     "--summary-interval", "3600", "--first-label", str(n * labels + 1)])
                procs.append(sims[store])
                sims[store].line_with("listening on")
                _drain(sims[store])
            servers = []
            for n in range(instances):
                server = _Proc([*_esl(), "serve", "--instance", f"s{n + 1}"], env)
                procs.append(server)
                server.line_with("eslserver: http")
                servers.append(_drain(server))
            gateways: dict[str, _Proc] = {}
            for store in seeded:
                trust = await trust_gateway(data, data / f"gw-{store}", store, GATEWAY, database_url=database_url)
                gateways[store] = _Proc([*_esl(), "gateway", "--broker", url, "--radio",
                                         f"sim://127.0.0.1:{sim_ports[store]}", "--store", store, "--id", GATEWAY,
                                         "--data", str(data / f"gw-{store}"), "--concurrency", "256", *trust])
                procs.append(_drain(gateways[store]))
            observer = await open_database(settings.database).open()
            procs_close = observer.close
            initial = await _converged(observer, macs, None, timeout=1200)
            before = {m: st[2] for m, st in (await _states(observer)).items()}
            parts = {**{f"server s{n + 1}": s.popen.pid for n, s in enumerate(servers)},
                     **{f"gateway {store}": g.popen.pid for store, g in gateways.items()},
                     **{f"simulator {store}": p.popen.pid for store, p in sims.items()}}
            wal0 = await _wal_lsn(database_url) if database_url else None
            cpu0 = {name: _cpu_s(pid) for name, pid in parts.items()}
            db0 = _postgres_cpu_s() if database_url else 0.0
            async with MqttConnection(MqttSettings.from_url(url), client_id="bench-pos", clean_session=False) as pos:
                await pos.connected.wait()
                old = {r["sku"]: Decimal(r["price"]) for r in _records(labels)}
                t0 = time.perf_counter()
                for store, pairs in seeded.items():
                    batch = [{"sku": sku, "price": str(old[sku] + Decimal("0.01")), "seq": 2} for _, sku in pairs]
                    for i in range(0, len(batch), 1000):
                        await pos.publish(Topics("esl", store).pos_prices, json.dumps(batch[i:i + 1000]))
                elapsed = (time.perf_counter() - t0) + await _converged(observer, macs, before, timeout=1200)
            total = len(macs)
            cpu = {name: round(1000 * (_cpu_s(pid) - cpu0[name]) / total, 3) for name, pid in parts.items()}
            wal_per_label = None
            if database_url:
                cpu["postgresql"] = round(1000 * (_postgres_cpu_s() - db0) / total, 3)
                wal_per_label = round((await _wal_lsn(database_url) - (wal0 or 0)) / total)
        finally:
            if observer is not None:
                await procs_close()
            for proc in reversed(procs):
                proc.stop()
            await broker.stop()
    return {"engine": "postgresql" if database_url else "sqlite", "instances": instances, "stores": stores,
            "labels": len(macs), "initial_show_s": round(initial, 1), "seconds": round(elapsed, 2),
            "labels_per_s": round(len(macs) / elapsed, 1), "cpu_ms_per_label": cpu,
            "postgresql_wal_bytes_per_label": wal_per_label}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from tests.postgres import fresh_database

    labels = 300 if args.quick else args.labels
    results = [await run(labels, 1, None, args.stores)]
    for n in (int(v) for v in args.instances.split(",")):
        async with fresh_database() as url:
            results.append(await run(labels, n, url, args.stores))
    base = results[0]["labels_per_s"]
    for r in results:
        r["ratio_to_sqlite_one"] = round(r["labels_per_s"] / base, 2)
    return {"benchmark": "chain", "stores": args.stores, "labels_per_store": labels, "runs": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", type=int, default=2)
    parser.add_argument("--labels", type=int, default=5000, help="labels per store")
    parser.add_argument("--instances", default="1,2,3", help="instance counts on PostgreSQL (comma-separated)")
    parser.add_argument("--quick", action="store_true", help="300 labels per store: a check that it runs")
    out = asyncio.run(main_async(parser.parse_args(argv)))
    print(f"{'engine':<11} {'inst':>4} {'labels/s':>9} {'ratio':>6}  CPU ms per label")
    for r in out["runs"]:
        cpu = ", ".join(f"{k} {v}" for k, v in r["cpu_ms_per_label"].items())
        print(f"{r['engine']:<11} {r['instances']:>4} {r['labels_per_s']:>9} {r['ratio_to_sqlite_one']:>6}  {cpu}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
