"""The technician's CLI against a real store: server (HTTP on a free port), Mosquitto (or the
embedded broker), the gateway and simulated labels (tests/pipeline_shop.py).

The commands run through typer's CliRunner in a worker thread (the server keeps serving in
the test's event loop) or, for the terminal, as a child process on a pseudo-terminal.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from eslserver.auth import create_token
from eslserver.cli import app
from tests.brokers import broker  # noqa: F401  (a fixture)
from tests.pipeline_shop import Shop, shop

BEL = "\a"


class Cli:
    """Runs ``esl …`` against one server with one token."""

    def __init__(self, url: str, token: str, config: Path) -> None:
        self.env = {"ESL_SERVER": url, "ESL_TOKEN": token, "ESL_CLI_CONFIG": str(config), "NO_COLOR": "1"}
        self.runner = CliRunner()

    async def __call__(self, *args: str, input: str | None = None, env: Mapping[str, str | None] | None = None,
                       code: int | None = 0) -> Result:
        result = await asyncio.to_thread(self.runner.invoke, app, list(args), input=input,
                                         env={**self.env, **(env or {})}, catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, (args, result.exit_code, result.stdout, result.stderr)
        return result

    async def json(self, *args: str) -> Any:
        return json.loads((await self(*args, "--json")).stdout)


async def _discovered(s: Shop, timeout: float = 10.0) -> None:
    """Wait until the gateway has reported every simulated label (their first check-in)."""
    deadline = time.monotonic() + timeout
    while not all([await s.server.labels.state(mac) for mac in s.macs]):
        assert time.monotonic() < deadline, "labels were not discovered"
        await asyncio.sleep(0.05)


@pytest.fixture
async def store(tmp_path: Path, broker: str) -> AsyncIterator[tuple[Shop, Cli]]:
    async with shop(tmp_path, broker, labels=3) as s:
        await s.seed([{"sku": "100", "price": "4.99", "name": "Mleko 3,2%", "ean": "5901234123457"},
                      {"sku": "200", "price": "12.50", "name": "Masło ekstra"}])
        token = await create_token(s.server.db, "tech", "tech-anna")
        await _discovered(s)
        yield s, Cli(f"http://127.0.0.1:{s.server.http_port}", token, tmp_path / "no-cli.toml")


def _rows(stdout: str) -> list[list[str]]:
    """Tab-separated output (piped) without its header line."""
    lines = stdout.splitlines()
    assert lines and "\t" in lines[0], stdout
    return [line.split("\t") for line in lines[1:]]


# --- against the whole store -------------------------------------------------------------------

async def test_discovered_labels_are_listed_paired_and_shown(store: tuple[Shop, Cli]) -> None:
    s, esl = store
    one, two, three = sorted(s.macs)
    unpaired = await esl.json("labels", "--unpaired")
    assert sorted(x["mac"] for x in unpaired) == sorted(s.macs)
    assert all(x["sku"] is None and x["state"] == "unpaired" and not x["paired"] for x in unpaired)
    table = await esl("labels", "--unpaired")
    assert sorted(r[0] for r in _rows(table.stdout)) == sorted(s.macs)
    # one-shot pairing: the label by its MAC in another spelling, the product by its EAN
    result = await esl("pair", one.replace(":", "-").lower(), "5901234123457", "--wait", "20")
    assert f"paired {one} → 100 Mleko 3,2% 4.99 PLN" in result.stdout
    assert f"label {one} shows it" in result.stdout
    state = await s.label(one)
    assert state["sku"] == "100" and state["state"] == "ok"
    assert s.store.labels[one].displayed_hash.hex() == state["expected_hash"]  # the label itself shows it
    assert s.store.labels[one].paired  # pairing provisioned its key over the air
    remaining = {x["mac"] for x in await esl.json("labels", "--unpaired")}
    assert remaining == {two, three}
    assert [r[0] for r in _rows((await esl("labels", "--state", "ok")).stdout)] == [one]
    assert (await esl.json("labels", "--gateway", "gw1", "--sku", "100"))[0]["mac"] == one
    assert await esl.json("labels", "--gateway", "nowhere") == []
    # the gateway serves them all
    gateways = await esl.json("gateways")
    assert [(g["id"], g["status"], g["labels"]) for g in gateways] == [("gw1", "online", 3)]
    assert _rows((await esl("gateways")).stdout)[0][:3] == ["gw1", "online", "3"]


async def test_find_flashes_the_simulated_labels_led(store: tuple[Shop, Cli]) -> None:
    s, esl = store
    mac = sorted(s.macs)[0]
    await esl("pair", mac, "200", "--wait", "20")
    loop = asyncio.get_running_loop()
    assert not s.store.labels[mac].led_at(loop.time()).flashing
    result = await esl("find", mac.replace(":", ""), "--seconds", "5", "--wait", "20")
    assert f"label {mac} confirmed: its LED is flashing" in result.stdout
    led = s.store.labels[mac].led_at(loop.time())
    assert led.flashing and led.on and led.flash_until is not None
    assert 0.0 < led.flash_until - loop.time() <= 5.0
    # an unpaired label cannot be commanded: a clear error, nothing queued
    other = sorted(s.macs)[1]
    result = await esl("find", other, code=1)
    assert "not paired yet" in result.stderr
    # the label's detail shows the product and its history (who paired it, the flash)
    detail = await esl("label", mac)
    assert "200 Masło ekstra 12.50 PLN" in detail.stdout and "paired       yes" in detail.stdout
    assert "LED flashed 5 s by tech-anna (tech)" in detail.stdout
    assert "bound to 200 by tech-anna (tech)" in detail.stdout
    info = await esl.json("label", mac)
    assert [h["action"] for h in info["history"]] == ["label.flash", "label.bind"]
    assert any(e["kind"] == "discovered" for e in info["events"])


async def test_filters_battery_and_stale(store: tuple[Shop, Cli]) -> None:
    s, esl = store
    one, two, _ = sorted(s.macs)
    async with s.server.db.transaction() as conn:  # what a check-in would report
        await conn.execute("UPDATE labels SET battery_mv = 2300 WHERE mac = ?", (two,))
        await conn.execute("UPDATE labels SET battery_mv = 2900 WHERE mac <> ?", (two,))
    assert [x["mac"] for x in await esl.json("labels", "--battery-below", "2400")] == [two]
    await esl("pair", one, "100")  # no wait: the label is stale until it shows it
    stale = {x["mac"] for x in await esl.json("labels", "--stale")}
    assert stale == {one}  # the unpaired labels are not late with anything
    await s.converged([one])
    assert one not in {x["mac"] for x in await esl.json("labels", "--stale")}
    result = await esl("labels", "--state", "sleepy", code=2)
    assert "--state: expected one of ok, pending, failed, offline, unpaired, got 'sleepy'" in result.stderr


async def test_pair_loop_from_a_pipe_with_wrong_scans(store: tuple[Shop, Cli]) -> None:
    s, esl = store
    one, two, three = sorted(s.macs)
    scans = [
        "nonsense",                     # not a label
        "5901234123457",                # a product where a label was expected
        "AA:BB:CC:00:00:99",            # unknown label
        one.replace(":", "").lower(),   # label …
        "999999",                       # … unknown product: the label stays chosen
        "100",                          # … paired
        f"ESL-{two.replace(':', '')}",  # label barcode …
        three,                          # … a label instead of a product: now pairing three
        "5901234123457",                # … three → 100 by EAN
        two,                            # a label and then the end: nothing half-bound
        "",
        "200",                          # after the empty line: never read
    ]
    result = await esl("pair", input="\n".join(scans) + "\n", code=1)  # wrong scans: a script must notice
    assert result.stdout.count("paired ") == 2
    assert f"paired {one} → 100 Mleko 3,2% 4.99 PLN" in result.stdout
    assert f"paired {three} → 100" in result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith(BEL)]
    assert len(errors) == 5, result.stderr
    assert "'nonsense' is not a label" in errors[0]
    assert "is a product (100 Mleko 3,2% 4.99 PLN), not a label: scan the label first" in errors[1]
    assert "unknown label AA:BB:CC:00:00:99" in errors[2]
    assert "unknown product '999999'" in errors[3]
    assert f"that was a label: now pairing {three}" in errors[4]
    assert f"label {two} was not paired: no product scanned" in result.stderr
    assert "2 paired, 5 wrong scans" in result.stderr
    assert (await s.label(one))["sku"] == "100" and (await s.label(three))["sku"] == "100"
    assert (await s.label(two))["sku"] is None and (await s.label(two))["state"] == "unpaired"
    assert await s.server.labels.state("AA:BB:CC:00:00:99") is None
    # end of input without an empty line ends the loop as well
    result = await esl("pair", input=f"{two}\n200")  # all good: status 0
    assert f"paired {two} → 200" in result.stdout and "1 paired, 0 wrong scans" in result.stderr


def _drive_pty(argv: list[str], env: Mapping[str, str], steps: list[tuple[str, str]], timeout: float = 8.0,
               code: int = 0) -> str:
    """Run `argv` on a pseudo-terminal; for each (wait_for, send) read until `wait_for` appears,
    then type `send`. Returns everything the terminal showed; the exit status must be `code`."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=dict(env), close_fds=True)
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + timeout
    try:
        for wait_for, send in steps:
            while wait_for.encode() not in seen:
                assert time.monotonic() < deadline, f"waiting for {wait_for!r}; the terminal shows {seen!r}"
                ready, _, _ = select.select([master], [], [], 0.1)
                if ready:
                    try:
                        seen += os.read(master, 4096)
                    except OSError:  # EIO: the child closed the terminal
                        break
            os.write(master, send.encode())
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(timeout=max(0.1, deadline - time.monotonic())) == code, seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return seen.decode("utf-8", "replace")


async def test_pair_loop_on_a_terminal(store: tuple[Shop, Cli]) -> None:
    s, esl = store
    one, two, _ = sorted(s.macs)
    env = {**os.environ, **esl.env}
    env.pop("NO_COLOR")
    argv = [sys.executable, "-c", "from eslserver.cli import main; main()", "pair", "--wait", "20"]
    steps = [("label> ", "zzz\n"), ("not a label", f"{one}\n"), ("product> ", "200\n"), ("label> ", f"{two}\n"),
             ("product> ", "\x04")]  # Ctrl-D at the product prompt: nothing half-bound
    shown = await asyncio.to_thread(_drive_pty, argv, env, steps, 25.0, 1)  # a wrong scan: status 1
    assert "Scan a label, then its product" in shown
    assert f"{BEL}'zzz' is not a label" in shown
    assert f"paired {one} → 200 Masło ekstra 12.50 PLN" in shown and f"label {one} shows it" in shown
    assert "\x1b[" in shown  # a terminal gets colour (the state)
    assert f"label {two} was not paired" in shown and "1 paired, 1 wrong scans" in shown
    assert (await s.label(one))["sku"] == "200" and (await s.label(two))["sku"] is None


async def test_terminal_tables_are_aligned_and_coloured(store: tuple[Shop, Cli]) -> None:
    s, esl = store
    env = {**os.environ, **esl.env}
    env.pop("NO_COLOR")
    argv = [sys.executable, "-c", "from eslserver.cli import main; main()", "labels"]
    shown = await asyncio.to_thread(_drive_pty, argv, env, [])
    lines = [line for line in shown.splitlines() if line.strip()]
    assert "\t" not in shown and lines[0].startswith("\x1b[1mMAC")
    assert "\x1b[34munpaired\x1b[0m" in shown  # the state in colour
    assert len(lines) == 1 + len(s.macs)


async def test_unpair_and_a_manual_price_change(store: tuple[Shop, Cli]) -> None:
    s, esl = store
    one = sorted(s.macs)[0]
    await esl("pair", one, "100", "--wait", "20")
    before = (await s.label(one))["expected_hash"]
    result = await esl("price", "100", "3,79")
    assert result.stdout.strip() == "100 Mleko 3,2%: 3.79 PLN (was 4.99); 1 label to redraw"
    deadline = time.monotonic() + 10
    while (await s.label(one))["expected_hash"] == before:  # the label is redrawn …
        assert time.monotonic() < deadline, "the label was not redrawn after the price change"
        await asyncio.sleep(0.05)
    await s.converged([one])  # … and shows the new price
    audit = await s.server.db.read("SELECT actor, role, action, target FROM audit WHERE action = 'price.update' "
                                   "AND actor = 'tech-anna'")
    assert [tuple(r) for r in audit] == [("tech-anna", "tech", "price.update", "100")]
    result = await esl("price", "100", "free", code=2)
    assert "PRICE: expected a number such as 4.99, got 'free'" in result.stderr
    result = await esl("price", "300", "1.00", code=1)
    assert "unknown product '300'" in result.stderr and "--create" in result.stderr
    await esl("price", "300", "1.00", "--create", "--name", "Chleb")
    assert (await esl.json("price", "300", "1.10"))["product"]["price"] == "1.10"
    result = await esl("unpair", one)
    assert result.stdout.strip() == f"unpaired {one} (was 100)"
    assert (await s.label(one))["state"] == "unpaired"
    result = await esl("unpair", "AA:BB:CC:00:00:99", code=1)
    assert "unknown label AA:BB:CC:00:00:99" in result.stderr


async def test_pair_reset_pairs_a_label_again_with_a_new_key(store: tuple[Shop, Cli]) -> None:
    """`esl pair --reset` is the technician's word that a label lost its key (the server never
    re-pairs a keyed label on its own key-less check-in): forgotten, paired again, audited."""
    s, esl = store
    mac = sorted(s.macs)[0]
    await esl("pair", mac, "100", "--wait", "20")
    before = s.store.labels[mac].flash.label_key
    assert before is not None
    result = await esl("pair", "--reset", mac, "--wait", "30")
    assert f"reset {mac}: its key is forgotten, pairing it again" in result.stdout
    assert f"label {mac} is paired and shows its product again" in result.stdout
    after = s.store.labels[mac].flash.label_key
    assert after is not None and after != before  # a new key, provisioned over the air
    assert (await s.label(mac))["state"] == "ok"
    info = await esl.json("label", mac)  # the audit trail of the label names the reset
    assert info["history"][0]["action"] == "label.reset"
    wrong = await esl("pair", "--reset", mac, "100", code=2)
    assert "--reset takes one LABEL and no product" in wrong.stderr
