"""A gateway runs with only requirements/gateway.txt installed: no renderer, numpy, numba,
Pillow, Jinja2, qrcode, zxing-cpp, aiohttp or amqtt.

Here they are installed, so the gateway runs in a child interpreter whose import system
refuses them (a meta-path finder): the packages pyproject.toml requires that
requirements/gateway.txt leaves out, plus our own `render` and `simulator`. The CLI must
start, and a real `esl gateway` process must carry a server's image jobs to simulated labels
until every label shows its image (so no job path imports them either).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from eslserver.server import SYSTEM, Server
from simulator.radio_server import RadioServer
from simulator.store import SimStore, StoreConfig
from tests.brokers import mosquitto
from tests.pipeline_shop import shop_settings
from tests.processes import GATEWAY_READY, Processes, trust_gateway
from tests.test_install_deps import gateway_requirements, runtime_requirements

OURS_NOT_FOR_GATEWAYS = ("render", "simulator")
"""Our own packages a gateway never imports (the renderer, the label simulator)."""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def blocked_modules() -> list[str]:
    """Top-level modules of every runtime dependency the gateway install leaves out, and ours."""
    left_out = set(runtime_requirements()) - {_norm(r.name) for r in gateway_requirements()}
    modules = {module for module, dists in importlib.metadata.packages_distributions().items()
               if any(_norm(d) in left_out for d in dists) and not module.startswith("_")}
    return sorted(modules | set(OURS_NOT_FOR_GATEWAYS))


_BLOCKER = """
import sys
BLOCKED = frozenset({blocked!r})
class _Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{{name}} is not part of the gateway install", name=name)
        return None
sys.meta_path.insert(0, _Refuse())
"""


def light_python(code: str) -> list[str]:
    """A command line running `code` in an interpreter that cannot import `blocked_modules()`."""
    return [sys.executable, "-c", _BLOCKER.format(blocked=blocked_modules()) + code]


def light_esl(*args: str) -> list[str]:
    return [*light_python("from eslserver.cli import main; main()"), *args]


def test_the_blocked_set_holds_the_heavy_packages() -> None:
    blocked = set(blocked_modules())
    assert {"numpy", "numba", "PIL", "jinja2", "qrcode", "zxingcpp", "render", "aiohttp"} <= blocked
    assert not blocked & {"aiomqtt", "paho", "cryptography", "typer", "aiosqlite", "bleak", "zlib_ng"}
    refused = subprocess.run(light_python("import numpy"), capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "numpy is not part of the gateway install" in refused.stderr


def test_cli_and_gateway_modules_import_without_the_renderer() -> None:
    code = ("import eslserver.cli, eslserver.gateway.bridge, eslserver.gateway.links.loopback, "
            "eslserver.gateway.links.ble, firmware_proto; print('imported')")
    done = subprocess.run(light_python(code), capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr
    for args, expect in ((["--help"], "gateway"), (["--version"], "esl (eslserver) "),
                         (["gateway", "--help"], "--radio")):
        done = subprocess.run(light_esl(*args), capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, (args, done.stderr)
        assert expect in done.stdout, (args, done.stdout)


async def test_a_gateway_without_the_renderer_brings_every_label_its_image(tmp_path: Path) -> None:
    async with mosquitto() as url:
        settings = shop_settings(tmp_path / "data", url)
        async with Server(settings) as server:
            await server.add_identity("gateway", "gw1")  # registered: the server listens to it
            store = SimStore(StoreConfig(labels=3, models=("2.9-bwry",), always_listening=True, wake_interval_s=1.0))
            radio = RadioServer(store, "127.0.0.1", 0)
            async with store, radio, Processes(tmp_path / "procs") as procs:
                host, port = radio.address
                trust = await trust_gateway(tmp_path / "data", tmp_path / "gw", settings.store, "gw1")
                gateway = procs.spawn("gateway", light_esl(
                    "gateway", "--broker", url, "--radio", f"sim://{host}:{port}", "--store", settings.store,
                    "--id", "gw1", "--data", str(tmp_path / "gw"), "--status-interval", "1", *trust))
                await gateway.start(ready=GATEWAY_READY)
                skus = ["A", "B", "C"]
                result = await server.ingest.submit(
                    [{"sku": s, "price": f"{i + 2}.49", "name": f"Produkt {s}"} for i, s in enumerate(skus)],
                    source="test", actor=SYSTEM)
                assert not result.errors, result.errors
                for mac, sku in zip(store.labels, skus, strict=True):
                    await server.labels.bind(mac, sku, actor=SYSTEM, model=store.labels[mac].model.name)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 45
                while True:
                    states = {mac: await server.labels.state(mac) for mac in store.labels}
                    if all(st is not None and st["state"] == "ok" and st["expected_hash"] is not None
                           and store.labels[mac].displayed_hash.hex() == st["expected_hash"]
                           for mac, st in states.items()):
                        break
                    assert loop.time() < deadline, f"labels did not converge: {states}\n{procs.logs()}"
                    assert gateway.running, procs.logs()
                    await asyncio.sleep(0.1)
                ready = re.search(GATEWAY_READY, gateway.log)
                assert ready is not None
                output = gateway.log[ready.start():]  # what it printed (the log starts with its command line)
                assert "Traceback" not in output and "ModuleNotFoundError" not in output, output
                assert await gateway.stop() == 0, gateway.log

