"""Does the server keep answering while a template bomb burns in a preview?

    python -m benchmarks.template_bomb [--cpu 5] [--seconds 5]

Starts a real ``esl serve`` (embedded broker, its own data directory) with
``template_cpu_s = --cpu``, then measures the latency of ``GET /healthz`` (one request every
20 ms, from this process) twice: for `--seconds` with nothing else going on (the baseline),
and while a preview of an endless-loop template runs until the render process's CPU limit
stops it. Printed: the worst and median latency of each, their ratio, and how the preview
was answered (it must be a 422 naming the template line and the limit). A table goes to
stdout, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

BOMB = ('{#- esl-template\nmodel: 2.9-bwry\n-#}\n<label model="2.9-bwry">\n'
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n</label>\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _esl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from eslserver.cli import main; main()", *args],
                          capture_output=True, text=True, env=env, check=True, timeout=120)


async def _poll(session: aiohttp.ClientSession, url: str, until: asyncio.Future[Any] | float) -> list[float]:
    latencies: list[float] = []
    deadline = until if isinstance(until, float) else None
    while (time.monotonic() < deadline) if deadline is not None else not until.done():  # type: ignore[union-attr]
        started = time.perf_counter()
        async with session.get(url) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"/healthz answered {resp.status}")
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(0.02)
    return latencies


async def _measure(base: str, token: str, seconds: float) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):  # wait for the server
            try:
                async with session.get(base + "/healthz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        headers = {"Authorization": f"Bearer {token}"}
        # one ordinary preview first: the preview process is started on first use
        async with session.post(base + "/api/v1/templates/preview", json={"name": "shelf-2.9"},
                                headers=headers) as resp:
            await resp.read()
        idle = await _poll(session, base + "/healthz", time.monotonic() + seconds)

        async def bomb() -> tuple[int, dict[str, Any], float]:
            started = time.perf_counter()
            async with session.post(base + "/api/v1/templates/preview", json={"source": BOMB},
                                    headers=headers) as resp:
                return resp.status, await resp.json(), time.perf_counter() - started

        task = asyncio.ensure_future(bomb())
        during = await _poll(session, base + "/healthz", task)
        status, body, preview_s = await task
    return {"idle": idle, "during": during, "status": status, "body": body, "preview_s": preview_s}


def run(cpu: float, seconds: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="esl-bomb-") as tmp:
        data = Path(tmp) / "data"
        port = _free_port()
        env = {**os.environ, "ESL_TEMPLATE_CPU_S": str(cpu), "ESL_TEMPLATE_TIMEOUT_S": str(cpu * 3),
               "ESL_FACTORY_SECRET": "eslserver-simulator-0"}  # no labels here; `esl serve` needs one set
        token = _esl("tokens", "create", "--role", "merchandiser", "--name", "bench", "--data", str(data),
                     "--init", env=env).stdout.strip().splitlines()[-1]
        server = subprocess.Popen([sys.executable, "-c", "from eslserver.cli import main; main()", "serve",
                                   "--data", str(data), "--http-port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            m = asyncio.run(_measure(f"http://127.0.0.1:{port}", token, seconds))
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    idle, during = m["idle"], m["during"]
    result = {
        "benchmark": "template_bomb", "template_cpu_s": cpu,
        "idle_requests": len(idle), "idle_p50_ms": round(statistics.median(idle) * 1000, 2),
        "idle_max_ms": round(max(idle) * 1000, 2),
        "bomb_requests": len(during), "bomb_p50_ms": round(statistics.median(during) * 1000, 2),
        "bomb_max_ms": round(max(during) * 1000, 2),
        "max_ratio": round(max(during) / max(idle), 2),
        "preview_status": m["status"], "preview_s": round(m["preview_s"], 2),
        "preview_detail": m["body"].get("detail"),
    }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", type=float, default=5.0, help="template_cpu_s of the server")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the idle measurement")
    args = parser.parse_args(argv)
    r = run(args.cpu, args.seconds)
    print(f"{'/healthz':<28}{'requests':>10}{'p50 ms':>10}{'max ms':>10}")
    print(f"{'idle':<28}{r['idle_requests']:>10}{r['idle_p50_ms']:>10}{r['idle_max_ms']:>10}")
    print(f"{'during a preview bomb':<28}{r['bomb_requests']:>10}{r['bomb_p50_ms']:>10}{r['bomb_max_ms']:>10}")
    print(f"worst latency during the bomb / worst idle: {r['max_ratio']}x; the preview answered "
          f"{r['preview_status']} after {r['preview_s']} s: {r['preview_detail']}")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
