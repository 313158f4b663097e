"""What trust costs per job, against the time-to-shelf floor.

    python -m benchmarks.trust [--jobs 2000]

Per job the server derives the job key, makes the ticket, seals the job key to the gateway
(X25519 + HKDF + AES-GCM) and signs the envelope (Ed25519); the gateway checks the signature
and opens the job key; the label checks the ticket, derives the job key and seals its final
word; the server verifies that word. All of it is measured here, step by step, on one core.

Two floors, measured on the same jobs in the same run: a price-only region update carried out
by the gateway's job runner (`run_job`, what every real job goes through) against a simulated
label over the in-memory radio, with no latency, no loss and no broker: its wall time (the CPU
floor: the protocol's own work, the trust steps of the gateway and the label included), and the
BLE airtime of the frames it exchanged (every byte of every frame both ways plus 17 bytes of
link overhead per frame, at 1 Mbit/s: the radio floor, which no job can beat). The printed
ratios are the trust steps' cost against each. Unless ``--no-chain``, also against the
unloaded time-to-shelf floor of the whole chain (POS publish to the label's confirmed report,
one update at a time: Mosquitto, ``esl serve``, ``esl gateway``, ``esl simulate``, measured by
`benchmarks.pipeline`), which is what a store sees. A table goes to stdout, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from eslserver.gateway.conversation import JobSettings, run_job
from firmware_proto.auth import Direction, FrameKey, seal, verify
from firmware_proto.envelope import credentials, open_job_key, verify_envelope
from firmware_proto.frames import JobStatus, parse_frame
from firmware_proto.jobkeys import derive_job_key
from firmware_proto.models import get_model
from firmware_proto.transfer import plan_update
from firmware_proto.trust import GatewayKey, SigningKey
from simulator.faults import FaultConfig
from simulator.label import factory_key
from simulator.links import MemoryRadio
from simulator.screen import demo_indices, pack_indices
from simulator.store import SimStore, StoreConfig, label_address
from tests.job_issuer import Issuer

MODEL = get_model("2.9-bwry")
MAC = label_address(1)
KEY = bytes(range(16, 32))


def _per_call(fn: Callable[[], object], n: int) -> float:
    """Median seconds per call over 5 rounds of `n` calls."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        rounds.append((time.perf_counter() - start) / n)
    return statistics.median(rounds)


def crypto_steps(n: int) -> dict[str, float]:
    """Seconds per job of each step, and their sum."""
    signer, gateway = SigningKey.generate(), GatewayKey.generate()
    issuer = Issuer(store="s1", gateway="gw1", gateway_key=gateway.public, signer=signer)
    fb1, fb2 = (pack_indices(demo_indices(MODEL, i), MODEL) for i in (1, 2))
    update = plan_update(MODEL, fb2, base_fb=fb1)
    assert update is not None
    job = issuer.image(update, job_id=1, mac=MAC, label_key=KEY)
    data = issuer.sign(job)
    status = JobStatus(address=job.mac_bytes, job_id=1, attempt=0, result=0, displayed_hash=bytes(8),
                       battery_mv=3000, temperature_c=20, rssi=-50, rx_counter=10)
    status_raw = seal(status, FrameKey(KEY), job.mac_bytes, Direction.FROM_LABEL, 99)
    status_frame = parse_frame(status_raw)
    ticket = parse_frame(job.ticket)
    steps = {
        "server: job key + ticket + sealed key": lambda: credentials(
            label_key=KEY, gateway_key=gateway.public, job_id=1, attempt=0, mac=MAC, store="s1", gateway="gw1",
            first=1, last=500),
        "server: sign the envelope": lambda: job.to_bytes(signer),
        "gateway: verify the signature": lambda: verify_envelope(data, signer.public),
        "gateway: open the job key": lambda: open_job_key(job, gateway),
        "label: verify the ticket, derive the key": lambda: (
            verify(ticket, FrameKey(KEY), job.mac_bytes, Direction.TO_LABEL),
            derive_job_key(KEY, MAC, 1, 0, 1, 500)),
        "label: seal its final word": lambda: seal(status, FrameKey(KEY), job.mac_bytes, Direction.FROM_LABEL, 99),
        "server: verify the final word": lambda: verify(status_frame, FrameKey(KEY), job.mac_bytes,
                                                        Direction.FROM_LABEL),
    }
    out = {name: _per_call(fn, n) for name, fn in steps.items()}
    out["total"] = sum(out.values())
    return out


_BLE_OVERHEAD = 17  # preamble 1, access address 4, LL header 2, CRC 3, L2CAP 4, ATT 3
_BLE_BITS_PER_S = 1_000_000


async def floor(jobs: int) -> tuple[float, float]:
    """Median seconds from starting a price-only job to the label's final word, in memory; and
    the median BLE airtime of the frames such a job exchanges."""
    store = SimStore(StoreConfig(labels=1, seed=3, always_listening=True, faults=FaultConfig()))
    gateway = GatewayKey.generate()
    issuer = Issuer(store="s1", gateway="gw1", gateway_key=gateway.public)
    settings = JobSettings(reply_timeout_s=0.5)
    times, airtimes = [], []
    async with store:
        radio = MemoryRadio(store)
        await radio.start()
        try:
            paired = await run_job(radio, issuer.pair(job_id=1, mac=MAC, factory_key=factory_key(3, MAC),
                                                      new_key=KEY), settings=settings)
            issuer.heard(paired)
            screens = [pack_indices(demo_indices(MODEL, i % 7), MODEL) for i in range(jobs + 1)]
            first = plan_update(MODEL, screens[0])
            assert first is not None
            job = issuer.image(first, job_id=2, mac=MAC, label_key=KEY)
            issuer.heard(await run_job(radio, job, job_key=open_job_key(job, gateway), settings=settings))
            for i in range(1, jobs + 1):
                update = plan_update(MODEL, screens[i], base_fb=screens[i - 1])
                if update is None:
                    continue
                job = issuer.image(update, job_id=2 + i, mac=MAC, label_key=KEY)
                key = open_job_key(job, gateway)
                label = store.label(MAC)
                frames0, bytes0 = label.frames_in + label.frames_out, label.bytes_in + label.bytes_out
                start = time.perf_counter()
                result = await run_job(radio, job, job_key=key, settings=settings)
                times.append(time.perf_counter() - start)
                count = label.frames_in + label.frames_out - frames0
                sent = label.bytes_in + label.bytes_out - bytes0
                airtimes.append((sent + _BLE_OVERHEAD * count) * 8 / _BLE_BITS_PER_S)
                assert result.type == "ack", result
                issuer.heard(result)
        finally:
            await radio.close()
    return statistics.median(times), statistics.median(airtimes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000, help="calls per crypto step per round")
    parser.add_argument("--floor-jobs", type=int, default=60, help="in-memory jobs for the floor")
    parser.add_argument("--no-chain", action="store_true", help="skip the whole-chain floor (real processes)")
    args = parser.parse_args(argv)
    steps = crypto_steps(args.jobs)
    shelf, airtime = asyncio.run(floor(args.floor_jobs))
    width = max(len(name) for name in steps) + 12
    for name, seconds in steps.items():
        print(f"{name:<{width}}  {seconds * 1e6:9.1f} µs")
    print(f"{'floor: the job in memory (CPU, no radio)':<{width}}  {shelf * 1e6:9.1f} µs")
    print(f"{'floor: its frames on a BLE 1M radio':<{width}}  {airtime * 1e6:9.1f} µs")
    ratio, air_ratio = steps["total"] / shelf, steps["total"] / airtime
    result: dict[str, Any] = {"steps_us": {k: round(v * 1e6, 1) for k, v in steps.items()},
                              "floor_us": round(shelf * 1e6, 1), "airtime_us": round(airtime * 1e6, 1),
                              "ratio": round(ratio, 4), "ratio_airtime": round(air_ratio, 4)}
    chain_text = ""
    if not args.no_chain:
        from benchmarks.pipeline import time_to_shelf

        chain = asyncio.run(time_to_shelf(20, 10.0, 1.0))["floor_p50_ms"]
        print(f"{'floor: the whole chain, unloaded (p50)':<{width}}  {chain * 1e3:9.1f} µs")
        result["chain_floor_ms"] = chain
        result["ratio_chain"] = round(steps["total"] / (chain / 1e3), 4)
        chain_text = f"; / the whole chain's time-to-shelf floor: {result['ratio_chain']:.4f}"
    print(f"trust per job / in-memory job: {ratio:.3f}; / airtime alone: {air_ratio:.3f}{chain_text}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
