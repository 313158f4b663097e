"""Scale of the label simulator: N labels in one process converge under loss; time and RSS.

Each scenario runs in its own subprocess (so peak RSS is that scenario's alone):

- baseline: N labels, lossless air;
- lossy: the same N labels under 10 % loss in each direction (the target:
  all converge, RSS under 500 MB).

Every label is paired and sent its own image by the simulated gateway over in-memory links
(`eslserver.gateway.conversation.converge`, 500 conversations at a time, always-listening labels). Prints a
table and one JSON line. Usage::

    python benchmarks/simulator.py [--labels 10000] [--loss 0.1] [--concurrency 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time

# run as a script, this file's directory comes first on sys.path and its name would shadow
# the `simulator` package
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]


async def _scenario(labels: int, loss: float, concurrency: int, seed: int) -> dict[str, object]:
    from firmware_proto.image import image_hash
    from simulator.faults import FaultConfig
    from eslserver.gateway.conversation import Target, converge
    from simulator.label import factory_key
    from simulator.links import MemoryRadio
    from simulator.screen import demo_indices, pack_indices
    from simulator.store import SimStore, StoreConfig

    t0 = time.perf_counter()
    store = SimStore(StoreConfig(labels=labels, always_listening=True, models=("1.54-bw", "2.9-bwry"),
                                 seed=seed, faults=FaultConfig(seed=seed, loss=loss)))
    targets = {
        address: Target(factory_key(seed, address), b"benchmark-key-16",
                        pack_indices(demo_indices(label.model, i), label.model))
        for i, (address, label) in enumerate(store.labels.items())
    }
    rss_idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t1 = time.perf_counter()
    radio = MemoryRadio(store)
    await radio.start()
    results = await converge(radio, targets, concurrency=concurrency)
    await radio.close()
    t2 = time.perf_counter()
    converged = sum(1 for a, lb in store.labels.items() if lb.displayed_hash == image_hash(targets[a].framebuffer))
    stats = store.stats()
    return {
        "labels": labels, "loss": loss, "converged": converged,
        "setup_s": round(t1 - t0, 2), "converge_s": round(t2 - t1, 2),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_setup_mb": round(rss_idle, 1),
        "frames_to_labels": sum(r.frames_sent for r in results.values()),
        "frames_from_labels": stats.frames_out, "timeouts": sum(r.timeouts for r in results.values()),
    }


def _run_child(labels: int, loss: float, concurrency: int, seed: int) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", "--labels", str(labels), "--loss", str(loss),
         "--concurrency", str(concurrency), "--seed", str(seed)],
        check=True, capture_output=True, text=True)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels", type=int, default=10_000)
    parser.add_argument("--loss", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_scenario(args.labels, args.loss, args.concurrency, args.seed))))
        return
    base = _run_child(args.labels, 0.0, args.concurrency, args.seed)
    lossy = _run_child(args.labels, args.loss, args.concurrency, args.seed)
    ratio = float(lossy["converge_s"]) / max(float(base["converge_s"]), 1e-9)  # type: ignore[arg-type]
    print(f"{'scenario':<12}{'labels':>8}{'converged':>11}{'setup s':>9}{'converge s':>12}"
          f"{'RSS MB':>9}{'frames→':>10}{'timeouts':>10}")
    for name, r in (("lossless", base), (f"loss {args.loss:.0%}", lossy)):
        print(f"{name:<12}{r['labels']:>8}{r['converged']:>11}{r['setup_s']:>9}{r['converge_s']:>12}"
              f"{r['rss_mb']:>9}{r['frames_to_labels']:>10}{r['timeouts']:>10}")
    print(f"lossy / lossless convergence time: {ratio:.2f}x; all converged: "
          f"{lossy['converged'] == args.labels}; RSS under 500 MB: {float(lossy['rss_mb']) < 500}")  # type: ignore[arg-type]
    print(json.dumps({"benchmark": "simulator", "baseline": base, "lossy": lossy,
                      "time_ratio": round(ratio, 2)}))


if __name__ == "__main__":
    main()
