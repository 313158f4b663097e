"""A chaos run of a whole store with real processes: nothing confirmed is lost, nothing is applied
twice, no label shows a price that was never accepted, and how long labels show superseded prices.

Processes, as in a store: Mosquitto (persistence on, ``autosave_interval`` as
docs/operations.md shows it), ``esl serve``, ``esl gateway --radio sim://…`` and ``esl simulate
-v`` (which logs ``label MAC shows HASH`` each time a panel shows a new image: the shelf's own
truth, not the server's view of it). This process is the POS and the observer.

Phases:

1. **calm** (the baseline of the same run): the POS publishes at ``--rate`` updates/s for
   ``--calm-minutes``, nothing fails (the simulator has no faults);
2. **chaos** for ``--minutes``: the simulator restarts with ``--loss`` frame loss, ``--corrupt``
   corruption and labels going off the air for ``--offline-time`` seconds (about
   ``--offline-fraction`` of them at any time); kill -9 of the server, the gateway and the
   broker at random points, each ``--kills-each`` times, each started again after a short while;
3. **settle**: no more kills and no new prices; the POS re-sends what is still unconfirmed
   until everything is, then every label must show the image of its product's last price.

The POS gives every item a ``seq`` (per SKU, rising; prices only rise, so no label shows a
promotion) and an ``update_id``, keeps each item until a confirmation on ``pos/acks`` names
it, and re-sends what stayed unconfirmed for ``--resend-after`` seconds
(`tests.pos_outbox.OutboxPos`). At the end, from the server's database (read after a clean
stop), the POS's records and the simulator's log:

- every label shows the expected image of its product's last accepted price, drawn here
  independently (`render.batch.render_batch`, as tests/pipeline_shop.expected_hash_for does);
- every update confirmed ``applied`` is in the price history exactly once; no (SKU, seq) is
  there twice (0 duplicated); every published update is confirmed (0 lost);
- no label ever showed an image that is not the image of an accepted price of its product;
- superseded-price time: for each applied update, from the moment the server received it
  (its price-history ``start_at``) until its label first showed that price or a later one;
  p50 / p99 / max per phase, and the chaos/calm ratio.

Prints a table and one JSON line; exits 1 when an invariant fails.

    python3 -m benchmarks.chaos                          # the full run: 10 min, 2000 labels, 50/s
    python3 -m benchmarks.chaos --minutes 1 --labels 200 # the short run
    python3 -m benchmarks.chaos --keep /tmp/chaos-run    # keep logs, database and pos.jsonl

How long, on a 2-core machine: the short run takes about 3 minutes (158 s measured), a
1-minute chaos phase with 2000 labels 161 s; the full run about 15 minutes (setup and calm
phase 2, chaos 10, settling up to 3 while labels come back on the air, analysis 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import re
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

STORE = "chaos"
GATEWAY = "gw1"
MODEL = "2.9-bwry"
TEMPLATE = "shelf-2.9"
SIM_SEED = 0  # the labels' factory keys derive from it: tests.processes gives the server that secret

_SHOWS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO simulator\.label: label (\S+) shows ([0-9a-f]+)\s*$",
                    re.MULTILINE)
_OFF_AIR = re.compile(r"INFO simulator\.store: label (\S+) is off the air", re.MULTILINE)


# -- the store -------------------------------------------------------------------------------------


def _sku(i: int) -> str:
    return f"C{i:05d}"


def _base_price(i: int) -> Decimal:
    return Decimal("1.00") + Decimal(i % 500) / 10


def price_of(i: int, seq: int) -> str:
    """The price of SKU number `i` at `seq`: rises with seq, never repeats for one SKU."""
    return str(_base_price(i) + Decimal(seq) / 100)


def _seed_records(count: int) -> list[dict[str, Any]]:
    return [{"sku": _sku(i), "name": f"Towar chaosu {i}", "price": price_of(i, 1), "seq": 1} for i in range(count)]


async def _seed(settings: Any, labels: int) -> dict[str, str]:
    """Products and labels bound to them (label i ↔ product i), written by the server's own code;
    mac → sku."""
    from eslserver.server import SYSTEM, Server
    from simulator.store import label_address

    bindings = {label_address(i + 1): _sku(i) for i in range(labels)}
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        await server.add_identity("gateway", GATEWAY, store=STORE, reset=True)  # registered: the server listens
        records = _seed_records(labels)
        for i in range(0, len(records), 1000):
            result = await server.ingest.submit(records[i:i + 1000], source="cli", actor=SYSTEM)
            assert not result.errors, result.errors[:3]
        async with server.db.transaction() as conn:
            for mac, sku in bindings.items():
                await server.labels.register(conn, mac, MODEL, sku=sku, gateway=GATEWAY)
    return bindings


def expected_hashes(records: Sequence[dict[str, Any]], settings: Any) -> list[str]:
    """The image hash of each record, drawn here, independently of the server (in batches)."""
    from render.batch import render_batch
    from render.context import Store
    from render.templates import load_template

    template = load_template(TEMPLATE)
    store = Store(settings.store_name, settings.currency)
    out: list[str] = []
    for i in range(0, len(records), 500):
        for result in render_batch(template, [dict(r) for r in records[i:i + 500]], model=MODEL, store=store):
            assert result.hash is not None, result.error
            out.append(result.hash.hex())
    return out


def _log_time(stamp: str, millis: str) -> float:
    """A logging ``asctime`` (local time, as `logging` writes it) → seconds since the epoch."""
    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000


def _iso_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


@dataclass
class Shelf:
    """What the simulator's log says the panels showed: mac → [(time, hash)], in order."""

    path: Path
    shows: dict[str, list[tuple[float, str]]] = field(default_factory=lambda: defaultdict(list))
    off_air: Counter[str] = field(default_factory=Counter)
    _offset: int = 0

    def read(self) -> None:
        """Take in what the log gained since the last call (whole lines only)."""
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        text = data[:end].decode(errors="replace")
        for m in _SHOWS.finditer(text):
            self.shows[m[3]].append((_log_time(m[1], m[2]), m[4]))
        self.off_air.update(m[1] for m in _OFF_AIR.finditer(text))

    def showing(self, mac: str) -> str | None:
        got = self.shows.get(mac)
        return got[-1][1] if got else None


# -- the POS ---------------------------------------------------------------------------------------


@dataclass
class ChaosPos:
    """Publishes at a rate (batches of 1 to 4 items) and re-sends what stays unconfirmed."""

    pos: Any  # tests.pos_outbox.OutboxPos
    labels: int
    rate: float
    resend_after: float
    rng: random.Random
    seq: dict[int, int] = field(default_factory=dict)
    phase_of: dict[str, str] = field(default_factory=dict)
    """update_id → the phase it was published in."""
    queue: asyncio.Queue[list[dict[str, Any]]] = field(default_factory=asyncio.Queue)
    resent: Counter[str] = field(default_factory=Counter)
    _count: int = 0

    def _item(self, phase: str) -> dict[str, Any]:
        i = self.rng.randrange(self.labels)
        seq = self.seq[i] = self.seq.get(i, 1) + 1
        self._count += 1
        uid = f"chaos-{self._count:07d}"
        self.phase_of[uid] = phase
        return {"sku": _sku(i), "price": price_of(i, seq), "seq": seq, "update_id": uid}

    async def generate(self, phase: str, seconds: float) -> int:
        """Queue `rate` updates a second for `seconds`; how many."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        made = 0
        while (now := loop.time()) < t0 + seconds:
            due = int((now - t0) * self.rate) + 1 - made
            while due > 0:
                size = min(due, self.rng.randint(1, 4))
                await self.queue.put([self._item(phase) for _ in range(size)])
                made += size
                due -= size
            await asyncio.sleep(0.02)
        return made

    async def send(self) -> None:
        """Publish what is queued, in order (QoS 1; waits while the broker is away)."""
        while True:
            batch = await self.queue.get()
            try:
                await self.pos.publish(batch, timeout=None)
            except Exception:  # noqa: BLE001 - the POS goes on; its outbox re-sends the batch later
                logging.getLogger("chaos-pos").exception("publishing %d items failed", len(batch))
                await asyncio.sleep(1.0)

    async def resend(self) -> None:
        """Every second: queue again what stayed unconfirmed for `resend_after` seconds."""
        while True:
            await asyncio.sleep(1.0)
            late = self.pos.unconfirmed(self.resend_after)
            now = time.time()
            for sent in late:
                sent.last_sent = now  # the clock restarts now, not when the queue gets to it
                self.resent[self.phase_of[sent.item["update_id"]]] += 1
            for i in range(0, len(late), 20):
                await self.queue.put([s.item for s in late[i:i + 20]])


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    tmp: Path
    procs: Any = None
    broker: Any = None
    sim: Any = None
    server: Any = None
    gateway: Any = None
    settings: Any = None
    bindings: dict[str, str] = field(default_factory=dict)
    sim_port: int = 0
    kills: list[tuple[float, str, float]] = field(default_factory=list)
    phases: dict[str, tuple[float, float]] = field(default_factory=dict)

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)

    def sim_argv(self, *, faults: bool) -> list[str]:
        from tests.processes import esl_argv

        a = self.args
        argv = ["simulate", "--labels", str(a.labels), "--always-listening", "--wake-interval", str(a.wake_interval),
                "--listen", f"127.0.0.1:{self.sim_port}", "--summary-interval", "5", "--seed", str(SIM_SEED),
                "--state", str(self.tmp / "sim-state.json"), "-v"]
        if faults:
            argv += ["--loss", str(a.loss), "--corrupt", str(a.corrupt), "--offline", f"{offline_per_wake(a):.5f}",
                     "--offline-time", str(a.offline_time)]
        return esl_argv(*argv)

    async def start_all(self) -> None:
        from eslserver.broker import free_port
        from eslserver.config import load_settings
        from tests.brokers import MosquittoBroker
        from tests.processes import GATEWAY_READY, SERVE_READY, SIMULATE_READY, Processes, esl_argv

        a = self.args
        self.broker = MosquittoBroker(free_port(), persistence=True, autosave_interval_s=a.autosave_interval)
        await self.broker.start()
        env = {"ESL_DATA_DIR": str(self.tmp / "data"), "ESL_BROKER_URL": self.broker.url, "ESL_STORE": STORE,
               "ESL_HTTP_PORT": "0", "ESL_RENDER_WORKERS": "1", "ESL_LOG_LEVEL": "warning",
               "ESL_CHECKIN_INTERVAL_S": str(a.wake_interval)}
        self.settings = load_settings(None, environ=env)
        self.say(f"seeding {a.labels} products and labels")
        self.bindings = await _seed(self.settings, a.labels)
        from tests.processes import trust_gateway  # the operator's one-time registration of the gateway
        self.trust = await trust_gateway(self.settings.data_dir, self.tmp / "gw", STORE, GATEWAY)
        self.procs = Processes(self.tmp / "procs")
        self.sim_port = free_port()
        self.sim = self.procs.spawn("simulate", self.sim_argv(faults=False))
        await self.sim.start(ready=SIMULATE_READY, timeout=120)
        self.server = self.procs.spawn("serve", esl_argv("serve"), env=env)
        await self.server.start(ready=SERVE_READY, timeout=120)
        self.gateway = self.procs.spawn("gateway", esl_argv(
            "gateway", "--broker", self.broker.url, "--radio", f"sim://127.0.0.1:{self.sim_port}", "--store", STORE,
            "--id", GATEWAY, "--data", str(self.tmp / "gw"), "--concurrency", "64", "--status-interval", "5",
            *self.trust))
        await self.gateway.start(ready=GATEWAY_READY, timeout=120)

    async def restart_simulator_with_faults(self) -> None:
        from tests.processes import SIMULATE_READY

        await self.sim.stop()  # SIGTERM: the labels' keys, counters and screens are saved
        self.sim.argv = self.sim_argv(faults=True)
        offset = self.sim.log_path.stat().st_size
        await self.sim.start(ready=SIMULATE_READY, timeout=120)
        await _until(lambda: "gateways=1" in self.sim.log_path.read_bytes()[offset:].decode(errors="replace"),
                     "the gateway back on the restarted simulator", 120)

    async def kill_and_restart(self, victim: str, rng: random.Random) -> None:
        from tests.processes import GATEWAY_READY, SERVE_READY

        down = rng.uniform(0.5, 3.0)
        self.kills.append((time.time(), victim, down))
        if victim == "broker":
            self.broker.kill()
            await asyncio.sleep(down)
            await self.broker.start()
        else:
            child = self.server if victim == "server" else self.gateway
            child.kill()
            await asyncio.sleep(down)
            await child.start(ready=SERVE_READY if victim == "server" else GATEWAY_READY, timeout=120)
        self.say(f"kill -9 {victim}, down {down:.1f} s, running again")

    async def chaos_monkey(self, seconds: float, rng: random.Random) -> None:
        """Each victim killed `kills_each` times, at random points (one per slot of the run)."""
        victims = ["server", "gateway", "broker"] * self.args.kills_each
        rng.shuffle(victims)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        slot = seconds * 0.9 / len(victims)
        for n, victim in enumerate(victims):
            at = t0 + seconds * 0.05 + n * slot + rng.uniform(0, slot * 0.5)
            await asyncio.sleep(max(0.0, at - loop.time()))
            await self.kill_and_restart(victim, rng)

    async def aclose(self) -> None:
        if self.procs is not None:
            for child in (self.gateway, self.server, self.sim):
                if child is not None:
                    await child.stop()
            self.procs.kill_all()
        if self.broker is not None:
            self.broker.kill()
            await self.broker.aclose()


def offline_per_wake(a: argparse.Namespace) -> float:
    """The simulator's per-wake chance of going off the air that keeps about `offline_fraction`
    of the labels away at any time: p·T / (W + p·T) = f."""
    f, t, w = a.offline_fraction, a.offline_time, max(a.wake_interval, 0.1)
    return min(1.0, f * w / (t * (1 - f))) if f > 0 else 0.0


async def _until(check: Any, what: str, timeout: float, interval: float = 0.2) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        await asyncio.sleep(interval)


def _pct(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def run(args: argparse.Namespace) -> tuple[dict[str, Any], bool]:
    from tests.pos_outbox import OutboxPos
    from eslserver.topics import Topics

    started = time.time()
    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=False)
            work = args.keep
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="esl-chaos-")))
        r = Run(args, work)
        try:
            await r.start_all()
            shelf = Shelf(r.sim.log_path)
            seed_hashes = dict(zip(r.bindings.values(), expected_hashes(_seed_records(args.labels), r.settings)))
            r.say("waiting for every label to show its first image")
            await _until(lambda: (shelf.read(), all(shelf.showing(m) == seed_hashes[s]
                                                    for m, s in r.bindings.items()))[1],
                         "every label showing its first image", args.settle_timeout, 1.0)
            async with OutboxPos(r.broker.url, Topics("esl", STORE), client_id="chaos-pos") as pos:
                cpos = ChaosPos(pos, args.labels, args.rate, args.resend_after, rng)
                tasks = [asyncio.create_task(cpos.send(), name="chaos-pos send"),
                         asyncio.create_task(cpos.resend(), name="chaos-pos resend")]
                try:
                    t = time.time()
                    r.say(f"calm phase: {args.rate}/s for {args.calm_minutes} min, no faults")
                    calm = await cpos.generate("calm", args.calm_minutes * 60)
                    await _all_confirmed(pos, args.settle_timeout)
                    await _converged(r, shelf, cpos, args.settle_timeout)
                    r.phases["calm"] = (t, time.time())
                    r.say(f"calm phase done ({calm} updates); simulator restarts with faults")
                    await r.restart_simulator_with_faults()
                    t = time.time()
                    r.say(f"chaos phase: {args.minutes} min")
                    monkey = asyncio.create_task(r.chaos_monkey(args.minutes * 60, rng), name="chaos monkey")
                    chaos = await cpos.generate("chaos", args.minutes * 60)
                    await monkey
                    r.phases["chaos"] = (t, time.time())
                    r.say(f"chaos phase done ({chaos} updates); settling")
                    t_settle = time.time()
                    try:
                        await _all_confirmed(pos, args.settle_timeout)
                    except RuntimeError as exc:  # the report says what is missing
                        r.say(str(exc))
                    settled = await _converged(r, shelf, cpos, args.settle_timeout, raise_on_timeout=False)
                    settle_s = time.time() - t_settle
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
            await r.server.stop(grace_s=30)  # a clean stop, then the database is read as it is
            shelf.read()
            report = analyse(r, shelf, pos, cpos, settled=settled, settle_s=settle_s)
            if args.keep is not None:
                _record(args.keep / "pos.jsonl", pos, cpos)
        finally:
            await r.aclose()
    report["runtime_s"] = round(time.time() - started, 1)
    return report, report["ok"]


def _record(path: Path, pos: Any, cpos: ChaosPos) -> None:
    """Every item the POS published (phase, sends) with every confirmation of it, one JSON line each."""
    with path.open("w") as f:
        for uid, sent in pos.outbox.items():
            f.write(json.dumps({"item": sent.item, "phase": cpos.phase_of[uid], "sends": sent.sends,
                                "first_sent": sent.first_sent,
                                "confirmations": [[c.status, c.at] for c in pos.confirmations.get(uid, [])]}) + "\n")


async def _all_confirmed(pos: Any, timeout: float) -> None:
    await _until(lambda: not pos.unconfirmed(), "every published update confirmed", timeout, 0.5)


def _final_records(cpos: ChaosPos) -> dict[str, dict[str, Any]]:
    out = {r["sku"]: r for r in _seed_records(cpos.labels)}
    for i, seq in cpos.seq.items():
        out[_sku(i)] = {**out[_sku(i)], "price": price_of(i, seq), "seq": seq}
    return out


async def _converged(r: Run, shelf: Shelf, cpos: ChaosPos, timeout: float, *, raise_on_timeout: bool = True) -> bool:
    """Wait until every label shows (by the simulator's own report) its product's last price."""
    finals = _final_records(cpos)
    skus = sorted(finals)
    by_sku = dict(zip(skus, expected_hashes([finals[s] for s in skus], r.settings)))
    try:
        await _until(lambda: (shelf.read(), all(shelf.showing(m) == by_sku[s] for m, s in r.bindings.items()))[1],
                     "every label showing its last price", timeout, 1.0)
        return True
    except RuntimeError:
        if raise_on_timeout:
            raise
        return False


def analyse(r: Run, shelf: Shelf, pos: Any, cpos: ChaosPos, *, settled: bool, settle_s: float) -> dict[str, Any]:
    """The invariants and the figures, from the database, the POS's records and the shelf."""
    from tests.dbread import read_only

    db = r.settings.database_path
    history = read_only(db, "SELECT sku, price, seq, start_at FROM price_history WHERE store = ? ORDER BY id", (STORE,))
    rows: dict[tuple[str, int], list[sqlite3.Row]] = defaultdict(list)
    for row in history:
        rows[(row["sku"], row["seq"])].append(row)
    published = {uid: s.item for uid, s in pos.outbox.items()}
    by_key = {(it["sku"], it["seq"]): uid for uid, it in published.items()}
    statuses = Counter(pos.status(uid) for uid in published)
    unconfirmed = [uid for uid in published if pos.status(uid) is None]
    applied_missing = [uid for uid, it in published.items()
                       if any(c.status == "applied" for c in pos.confirmations.get(uid, []))
                       and len(rows.get((it["sku"], it["seq"]), [])) != 1]
    confirmed_applied = sum(1 for uid in published
                            if any(c.status == "applied" for c in pos.confirmations.get(uid, [])))
    duplicated = {k: len(v) for k, v in rows.items() if len(v) > 1}
    foreign = [k for k in rows if k[1] != 1 and (k not in by_key or Decimal(rows[k][0]["price"])
                                                 != Decimal(published[by_key[k]]["price"]))]
    # every accepted price's image, drawn here
    accepted = sorted(rows, key=lambda k: (k[0], k[1]))
    sku_index = {_sku(i): i for i in range(cpos.labels)}
    records = [{"sku": s, "name": f"Towar chaosu {sku_index[s]}", "price": rows[(s, q)][0]["price"], "seq": q}
               for s, q in accepted]
    hashes = dict(zip(accepted, expected_hashes(records, r.settings)))
    seq_of_hash: dict[str, dict[str, int]] = defaultdict(dict)  # sku → hash → seq
    for (s, q), h in hashes.items():
        seq_of_hash[s][h] = q
    # what the shelf showed: never an image of a price that was not accepted
    never_accepted = {mac: h for mac, sku in r.bindings.items() for _, h in shelf.shows.get(mac, [])
                      if h not in seq_of_hash[sku]}
    final = _final_records(cpos)
    final_ok = [mac for mac, sku in r.bindings.items()
                if shelf.showing(mac) == hashes.get((sku, final[sku]["seq"]))]
    # superseded-price time per applied update: received → the label shows it or a later price
    superseded: dict[str, list[float]] = {"calm": [], "chaos": []}
    never_shown = Counter[str]()
    end = time.time()
    applied_of: dict[str, list[tuple[int, list[sqlite3.Row]]]] = defaultdict(list)
    for (s, q), row_list in rows.items():
        if q != 1:
            applied_of[s].append((q, row_list))
    for mac, sku in r.bindings.items():
        shows = [(t, seq_of_hash[sku].get(h, -1)) for t, h in shelf.shows.get(mac, [])]
        for q, row_list in applied_of[sku]:
            uid = by_key.get((sku, q))
            phase = cpos.phase_of.get(uid or "", "")
            if phase not in superseded:
                continue
            t_u = _iso_time(row_list[0]["start_at"])
            first = next((t for t, shown_seq in shows if shown_seq >= q and t >= t_u - 1.0), None)
            if first is None:
                never_shown[phase] += 1
                first = end
            superseded[phase].append(max(0.0, first - t_u))
    figures = {}
    for phase, values in superseded.items():
        figures[phase] = {"updates": sum(1 for u in published if cpos.phase_of[u] == phase),
                          "applied": len(values), "resent": cpos.resent[phase], "never_shown": never_shown[phase],
                          "p50_s": _round(_pct(values, 0.50)), "p99_s": _round(_pct(values, 0.99)),
                          "max_s": _round(max(values) if values else None),
                          "mean_s": _round(statistics.fmean(values) if values else None)}
    ratio = {k: _round(figures["chaos"][k] / figures["calm"][k]) if figures["calm"][k] and figures["chaos"][k]
             is not None else None for k in ("p50_s", "p99_s", "max_s")}
    kills = Counter(v for _, v, _ in r.kills)
    invariants = {
        "labels_showing_last_accepted_price": (len(final_ok), len(r.bindings)),
        "published_updates_confirmed": (len(published) - len(unconfirmed), len(published)),
        "confirmed_applied_in_history_exactly_once": (confirmed_applied - len(applied_missing), confirmed_applied),
        "duplicated_in_history": (len(duplicated), 0),
        "history_rows_never_published": (len(foreign), 0),
        "labels_that_showed_a_never_accepted_price": (len(never_accepted), 0),
        "kills_server_gateway_broker_each_at_least": (min(kills[v] for v in ("server", "gateway", "broker")),
                                                      r.args.kills_each),
    }
    ok = (len(final_ok) == len(r.bindings) and not unconfirmed and not applied_missing and not duplicated
          and not foreign and not never_accepted and min(kills.values(), default=0) >= r.args.kills_each
          and len(kills) == 3)
    return {
        "benchmark": "chaos", "ok": ok, "settled": settled, "settle_s": round(settle_s, 1),
        "labels": r.args.labels, "rate": r.args.rate, "minutes": r.args.minutes, "calm_minutes": r.args.calm_minutes,
        "faults": {"loss": r.args.loss, "corrupt": r.args.corrupt, "offline_fraction": r.args.offline_fraction,
                   "offline_time_s": r.args.offline_time, "offline_per_wake": round(offline_per_wake(r.args), 5),
                   "off_air_episodes": sum(shelf.off_air.values()), "labels_off_air": len(shelf.off_air),
                   "mosquitto": f"persistence true, autosave_interval {r.args.autosave_interval}"},
        "kills": [{"t": round(t - r.phases["chaos"][0], 1), "victim": v, "down_s": round(d, 1)} for t, v, d in r.kills],
        "statuses": dict(statuses), "invariants": invariants, "superseded": figures, "ratio_chaos_to_calm": ratio,
        "examples": {"unconfirmed": unconfirmed[:5], "applied_missing": applied_missing[:5],
                     "duplicated": [list(k) for k in list(duplicated)[:5]], "never_accepted": list(never_accepted.items())[:5],
                     "behind": [m for m in r.bindings if m not in set(final_ok)][:5]},
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def print_table(report: dict[str, Any]) -> None:
    f = report["faults"]
    print(f"\nchaos run: {report['labels']} labels, POS {report['rate']} updates/s; calm {report['calm_minutes']} min, "
          f"chaos {report['minutes']} min (loss {f['loss']:.0%}, corruption {f['corrupt']:.0%}, "
          f"{f['off_air_episodes']} off-air episodes of {f['offline_time_s']:.0f} s on {f['labels_off_air']} labels; "
          f"{f['mosquitto']}); settle {report['settle_s']} s; run {report.get('runtime_s', '?')} s")
    print("kills (s into the chaos phase): " + ", ".join(f"{k['victim']}@{k['t']}" for k in report["kills"]))
    print(f"confirmation statuses: {report['statuses']}")
    print(f"\n{'phase':<7}{'updates':>9}{'applied':>9}{'re-sent':>9}{'never shown':>13}"
          f"{'superseded p50 s':>18}{'p99 s':>9}{'max s':>9}")
    for phase in ("calm", "chaos"):
        s = report["superseded"][phase]
        print(f"{phase:<7}{s['updates']:>9}{s['applied']:>9}{s['resent']:>9}{s['never_shown']:>13}"
              f"{_fmt(s['p50_s']):>18}{_fmt(s['p99_s']):>9}{_fmt(s['max_s']):>9}")
    ratio = report["ratio_chaos_to_calm"]
    print(f"{'ratio chaos / calm':<47}{_fmt(ratio['p50_s']):>18}{_fmt(ratio['p99_s']):>9}{_fmt(ratio['max_s']):>9}")
    print(f"\n{'invariant':<52}{'got':>14}  want")
    for name, (got, want) in report["invariants"].items():
        if name.startswith(("duplicated", "history_rows", "labels_that")):
            good, shown, wanted = got == 0, str(got), "0"
        elif name.startswith("kills"):
            good, shown, wanted = got >= want, str(got), f">= {want}"
        else:
            good, shown, wanted = got == want, f"{got}/{want}", f"100 % ({100 * got / max(want, 1):.1f} %)"
        print(f"{name:<52}{shown:>14}  {wanted}  {'ok' if good else 'FAILED'}")
    if not report["ok"]:
        print(f"examples: {report['examples']}")
    print("result: " + ("every invariant holds" if report["ok"] else "INVARIANT FAILED"), flush=True)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def main(argv: Iterable[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the chaos phase")
    ap.add_argument("--calm-minutes", type=float, default=1.0, help="length of the calm phase (the baseline)")
    ap.add_argument("--labels", type=int, default=2000, help="labels, one product each")
    ap.add_argument("--rate", type=float, default=50.0, help="POS updates per second")
    ap.add_argument("--loss", type=float, default=0.10, help="radio frame loss, each direction")
    ap.add_argument("--corrupt", type=float, default=0.01, help="radio frames corrupted")
    ap.add_argument("--offline-fraction", type=float, default=0.05, help="share of labels off the air at a time")
    ap.add_argument("--offline-time", type=float, default=None,
                    help="seconds a label stays off the air (default: a quarter of the chaos phase, at most 120)")
    ap.add_argument("--wake-interval", type=float, default=10.0, help="seconds between label check-ins")
    ap.add_argument("--kills-each", type=int, default=3, help="kill -9 of server, gateway and broker, each this often")
    ap.add_argument("--resend-after", type=float, default=10.0, help="the POS re-sends what is unconfirmed this long")
    ap.add_argument("--autosave-interval", type=int, default=60, help="Mosquitto autosave_interval (seconds)")
    ap.add_argument("--settle-timeout", type=float, default=None,
                    help="seconds to wait for confirmations and labels at the end of a phase (default from the faults)")
    ap.add_argument("--seed", type=int, default=14, help="seed of the POS and of the kill schedule")
    ap.add_argument("--keep", type=Path, default=None,
                    help="a new directory to run in and keep: logs, database, pos.jsonl (what was published and "
                         "every confirmation)")
    args = ap.parse_args(list(argv) if argv is not None else None)
    if args.offline_time is None:
        args.offline_time = min(120.0, max(10.0, args.minutes * 60 / 4))
    if args.settle_timeout is None:
        args.settle_timeout = max(240.0, 2 * args.offline_time + 4 * args.wake_interval + 120)
    if args.kills_each < 3:
        ap.error("--kills-each must be at least 3")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every child process is stopped
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s] %(name)s: %(message)s", datefmt="%H:%M:%S")
    report, ok = asyncio.run(run(args))
    print_table(report)
    print(json.dumps(report))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
