"""Templates run inside limits: size caps in the sandbox, element boxes within the label, and
CPU, memory and wall-clock limits on the render processes (previews, `esl templates check`,
the pipeline), through the library, the CLI, a real HTTP server and the pipeline."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from eslserver.auth import ROLES, create_token
from eslserver.config import load_settings
from eslserver.render_worker import PreviewJob, RenderItem, RenderJob, preview, render_limited
from eslserver.server import Server
from render.batch import render_batch
from render.isolate import LimitedPool, LimitExceeded, ProcessLimits
from render.samples import image_resolver, sample_catalogue
from render.templates import template_from_string
from tests.test_api_schema import ApiClient, add_label, add_products, wait_rendered

HEADER = '{#- esl-template\nmodel: 2.9-bwry\n-#}\n<label model="2.9-bwry">\n'  # line 5 comes next
LOOP = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
LIMITS = ProcessLimits(cpu_s=1, memory_mb=256, timeout_s=4)


def _source(line5: str, rest: str = "") -> str:
    return f"{HEADER}{line5}\n{rest}</label>\n"


def _render_error(source: str, name: str = "bomb") -> str:
    result = render_batch(template_from_string(source, name), sample_catalogue()[:1],
                          images=image_resolver())[0]
    assert result.error is not None, "the bomb rendered"
    return result.error


# --- size caps (in the sandbox, before anything is allocated) ---------------------------------

BOMBS = {
    "exponent chain": ("{% set x = ((10**1000)**1000)**10 %}", "bits, more than the limit"),
    "exponent tower": ("{% set x = 9 ** (9 ** 9) %}", "bits, more than the limit"),
    "big product": ("{{ (10**3000) * (10**3000) }}", "bits is more than the limit"),
    "string multiplication": ('{{ "x" * 100000 * 1000 }}', "repeated 1000 times"),
    "replace": ('{{ ("x"*100000)|replace("x", "x"*1000) }}', "replace would make a string of 100000000"),
    "format filter": ('{{ "%10000000d"|format(1) }}', "format width 10000000"),
    "format star": ('{{ "%*d"|format(100000000, 1) }}', "format width 100000000"),
    "percent operator": ('{{ "%099999999d" % 1 }}', "format width 099999999"),
    "str.format": ('{{ "{:>99999999}".format(1) }}', "format width 99999999"),
    "center": ('{{ "x"|center(100000000) }}', "center width 100000000"),
    "indent": ('{{ ("a" ~ "\\n")|indent(100000000) }}', "indent width 100000000"),
    "ljust": ('{{ "x".ljust(100000000) }}', "str.ljust width 100000000"),
    "huge list": ("{{ (range(100000)|list) * 1000 }}", "repeated 1000 times"),
    "doubling": ('{% set ns = namespace(s="xx") %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}'
                 "{% endfor %}", "joining"),
    "join": ('{{ range(100000)|join("x"*1000) }}', "join with a 1000-character separator"),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_size_bombs_fail_at_once_with_line_and_reason(name: str) -> None:
    line5, reason = BOMBS[name]
    error = _render_error(_source(line5))
    assert "bomb:5: security error" in error and reason in error, error


def test_output_and_recursion_bombs_fail_with_a_clear_reason() -> None:
    error = _render_error(_source('{% for i in range(100000) %}{{ "x" * 99999 }}{% endfor %}'))
    assert "output is longer than the limit of 1000000 characters" in error, error
    error = _render_error(_source("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"))
    assert "bomb:5: runtime error: RecursionError" in error, error


def test_caps_leave_ordinary_templates_alone() -> None:
    t = template_from_string(_source('{{ "ab" * 3 }} {{ 2 ** 100 }} {{ "%5.2f"|format(1.5) }} '
                                     '{{ "x"|center(9) }} {{ "a" + "b" }} {{ 7 % 3 }} {{ [1] * 3 }}'))
    markup = t.render_markup({"label": {"model": "2.9-bwry"}})
    assert "ababab 1267650600228229401496703205376  1.50     x     ab 1 [1, 1, 1]" in markup


# --- element boxes within the label --------------------------------------------------------

ELEMENTS = {
    "image": '<image x="0" y="0" w="60000" h="60000" src="sample:fruit"/>',
    "barcode": '<barcode x="0" y="0" w="100000" h="100000">5901234123457</barcode>',
    "qr": '<qr x="0" y="0" size="100000">https://example.com</qr>',
    "text": '<text x="0" y="0" w="100000" h="100000" size="400">x</text>',
    "price": '<price x="0" y="0" w="100000" h="60" size="48">1.00</price>',
}


@pytest.mark.parametrize("kind", list(ELEMENTS))
def test_huge_element_boxes_are_refused_without_allocating(kind: str) -> None:
    tracemalloc.start()
    try:
        error = _render_error(_source(ELEMENTS[kind]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "larger than the 296×128 label" in error and kind in error, error
    assert peak < 64 * 1024 * 1024, f"{peak / 2**20:.0f} MiB allocated for a refused {kind}"


# --- process limits -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pool() -> Iterator[LimitedPool]:
    p = LimitedPool(1, LIMITS, name="test-limits")
    yield p
    p.close()


def _preview(source: str) -> Any:
    return PreviewJob(source, "loop", sample_catalogue()[0], None, "Sklep", "PLN", datetime.now(timezone.utc))


def test_an_endless_loop_hits_the_cpu_limit_with_its_line(pool: LimitedPool) -> None:
    with pytest.raises(LimitExceeded) as info:
        pool.call(preview, _preview(_source(LOOP)))
    assert info.value.limit == "cpu" and info.value.template == "loop" and info.value.line == 5
    assert str(info.value) == "loop:5: limit error: CPU time limit of 1 s reached"
    indices = pool.call(preview, _preview(_source('<text x="0" y="0" w="100" h="20">ok</text>')))
    assert indices.shape == (128, 296)  # the same worker carries on


def test_memory_and_wall_clock_limits_and_a_stuck_worker_is_replaced(pool: LimitedPool) -> None:
    with pytest.raises(LimitExceeded) as info:
        pool.call(bytearray, 4 * 1024**3)
    assert info.value.limit == "memory" and "memory limit of 256 MB" in info.value.reason
    with pytest.raises(LimitExceeded) as info:
        pool.call(time.sleep, 30)
    assert info.value.limit == "time" and "wall-clock limit of 4 s" in info.value.reason
    before = pool.pids()
    with pytest.raises(LimitExceeded) as info:  # C code that never looks at its signals
        pool.call(sum, range(10**14))
    assert info.value.limit == "time" and "the worker was stopped" in info.value.reason
    assert pool.call(len, "abc") == 3 and pool.pids() != before


def _job(source: str, names: list[str]) -> RenderJob:
    records = []
    for i, name in enumerate(names):
        record = dict(sample_catalogue()[i])
        record["name"] = name
        records.append(record)
    items = tuple(RenderItem(f"AA:00:00:00:00:{i:02X}", str(r["sku"]), r) for i, r in enumerate(records))
    return RenderJob("bomb", 1, source, "2.9-bwry", "Sklep", "PLN", datetime.now(timezone.utc), items)


BOMB_ON_NAME = _source('{% if product.name == "BOMB" %}' + LOOP + "{% endif %}",
                       '<text x="0" y="0" w="200" h="20">{{ product.name }}</text>\n')


def test_bisection_finds_the_label_that_hits_the_limit(pool: LimitedPool) -> None:
    job = _job(BOMB_ON_NAME, ["Masło", "Chleb", "BOMB", "Mleko", "Ser"])
    outcomes = asyncio.run(render_limited(pool, job))
    assert [o.mac for o in outcomes] == [item.mac for item in job.items]
    bad = outcomes[2]
    assert bad.image_hash is None and bad.error is not None
    assert "bomb:5: limit error: CPU time limit of 1 s reached" in bad.error
    assert all(o.error is None and o.image_hash is not None for i, o in enumerate(outcomes) if i != 2)


def test_a_template_that_bombs_on_every_label_gives_up_after_two(pool: LimitedPool) -> None:
    outcomes = asyncio.run(render_limited(pool, _job(BOMB_ON_NAME, ["BOMB"] * 6)))
    assert all(o.error is not None and "limit error" in o.error for o in outcomes)


# --- esl templates check ------------------------------------------------------------------------

def _check(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bomb.j2"
    path.write_text(source, encoding="utf-8")
    env = {**os.environ, "ESL_TEMPLATE_CPU_S": "1", "ESL_TEMPLATE_TIMEOUT_S": "4"}
    return subprocess.run([sys.executable, "-c", "from eslserver.cli import main; main()", "templates", "check",
                           str(path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)


@pytest.mark.parametrize("line5, reason", [
    (LOOP, "bomb:5: limit error: CPU time limit of 1 s reached"),
    (BOMBS["exponent chain"][0], "bomb:5: security error:"),
    (BOMBS["replace"][0], "bomb:5: security error: replace would make"),
])
def test_templates_check_reports_a_bomb_in_one_line(tmp_path: Path, line5: str, reason: str) -> None:
    result = _check(tmp_path, _source(line5))
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, result.stderr
    assert len(errors) == 1 and reason in errors[0], result.stderr


# --- a real server: previews and the pipeline ---------------------------------------------------

@pytest.fixture
async def limited_api(tmp_path: Path) -> AsyncIterator[ApiClient]:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data", "http_port": 0,
                                                    "render_workers": 1, "template_cpu_s": 1,
                                                    "template_timeout_s": 4})
    async with Server(settings, mqtt=False) as server:
        tokens = {role: await create_token(server.db, role, f"test-{role}") for role in ROLES}
        async with aiohttp.ClientSession() as session:
            yield ApiClient(f"http://127.0.0.1:{server.http_port}", session, server, tokens)


async def _worst_healthz(api: ApiClient, stop: asyncio.Event) -> float:
    worst = 0.0
    while not stop.is_set():
        started = time.perf_counter()
        async with api.session.get(api.base + "/healthz") as resp:
            await resp.read()
            assert resp.status == 200
        worst = max(worst, time.perf_counter() - started)
        await asyncio.sleep(0.05)
    return worst


async def test_preview_bomb_fails_with_its_line_while_the_server_answers(limited_api: ApiClient) -> None:
    api = limited_api
    ok = await api.call("POST", "/api/v1/templates/preview", role="merchandiser",
                        json={"source": _source("")})  # starts the preview worker
    assert ok.status == 200
    stop = asyncio.Event()
    watcher = asyncio.create_task(_worst_healthz(api, stop))
    try:
        reply = await api.call("POST", "/api/v1/templates/preview", role="merchandiser",
                               json={"source": _source(LOOP)})
    finally:
        stop.set()
        worst = await watcher
    print(f"\nworst /healthz latency during a preview template bomb: {worst * 1000:.1f} ms")
    assert reply.status == 422 and reply.error == "template_error"
    assert reply.json["kind"] == "limit" and reply.json["line"] == 5
    assert "CPU time limit of 1 s reached" in reply.json["detail"]
    assert worst < 2.0
    reply = await api.call("POST", "/api/v1/templates/preview", role="merchandiser",
                           json={"source": _source(ELEMENTS["image"])})
    assert reply.status == 422 and "larger than the 296×128 label" in reply.json["detail"]
    reply = await api.call("PUT", "/api/v1/templates/bomb", role="merchandiser", json={"source": _source(LOOP)})
    assert reply.status == 422 and reply.json["kind"] == "limit" and reply.json["line"] == 5
    assert (await api.call("POST", "/api/v1/templates/preview", role="merchandiser",
                           json={"source": _source("")})).status == 200


async def test_pipeline_bomb_keeps_the_last_good_image_and_the_batch_renders(limited_api: ApiClient) -> None:
    api = limited_api
    names = {"501": "Masło", "502": "BOMB", "503": "Chleb", "504": "Mleko"}
    await add_products(api, *({"sku": sku, "name": name, "price": "4.99"} for sku, name in names.items()))
    macs = {sku: f"AA:BB:CC:00:05:{sku[-2:]}" for sku in names}
    for sku, mac in macs.items():
        await add_label(api, mac, sku)
    before = {sku: await wait_rendered(api, mac) for sku, mac in macs.items()}
    source = BOMB_ON_NAME.replace('<label model="2.9-bwry">', '<label model="{{ label.model }}">')
    reply = await api.call("PUT", "/api/v1/templates/shelf-2.9", role="merchandiser", json={"source": source})
    assert reply.status == 200, reply.json  # the samples do not trigger it
    after = {sku: await wait_rendered(api, mac) for sku, mac in macs.items()}
    row = await api.server.db.read_one("SELECT state, expected_hash FROM labels WHERE mac = ?", (macs["502"],))
    assert row is not None and row["state"] == "failed"
    assert row["expected_hash"] == before["502"] == after["502"]
    for sku in ("501", "503", "504"):
        assert after[sku] != before[sku]  # drawn with the new template
    events = await api.server.db.read("SELECT detail FROM events WHERE kind = 'render_error' AND mac = ?",
                                      (macs["502"],))
    assert any("limit error: CPU time limit of 1 s reached" in e["detail"] for e in events)
