"""Logs: JSON lines from `esl serve` and `esl gateway`, and failures logged once, recovery once.

Real parts: `esl` processes, Mosquitto, the simulator's radio, the server with its SQLite
file. A repeated failure is a real one: the server's database connection made read-only
(``PRAGMA query_only``) or a table taken away by another connection, then given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from eslserver.cli import app
from eslserver.config import ConfigError, load_settings
from eslserver.labels import LED_FLASH
from eslserver.logs import setup_logging
from eslserver.server import SYSTEM, Server
from simulator.radio_server import RadioServer
from simulator.store import SimStore, StoreConfig
from tests.brokers import mosquitto
from tests.pipeline_shop import shop, shop_settings
from tests.processes import GATEWAY_READY, SERVE_READY, Processes, esl_argv

MILK: dict[str, Any] = {"sku": "100100", "name": "Mleko 3,2% 1 l", "price": "3.49", "seq": 1}
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Leave the root logger as the test found it (`setup_logging` changes it)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
    root.setLevel(level)


def json_lines(text: str) -> list[dict[str, object]]:
    """The JSON log records in a process's output (its plain `typer.echo` lines are left out);
    no record may be in the text format."""
    assert not [line for line in text.splitlines() if TEXT_LINE.match(line)], text
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_json_records_are_one_line_each_with_fields(root_logging: None) -> None:
    out = io.StringIO()
    setup_logging("info", "json", context={"store": "s042"}, stream=out)
    log = logging.getLogger("eslserver.test")
    log.info("label %s shows %s", "AA:BB", "x", extra={"mac": "AA:BB", "sku": "100100", "job": 7})
    log.debug("not at info level")
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        log.exception("it failed", extra={"store": "other"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "label AA:BB shows x" and first["level"] == "info"
    assert first["logger"] == "eslserver.test" and first["store"] == "s042"
    assert (first["mac"], first["sku"], first["job"]) == ("AA:BB", "100100", 7)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", str(first["ts"])), first["ts"]
    assert second["level"] == "error" and second["store"] == "other"
    assert "Traceback" in str(second["exc"]) and "ValueError: bad\nvalue" in str(second["exc"])


def test_log_format_setting_from_file_environment_and_refusal(tmp_path: Path) -> None:
    toml = tmp_path / "esl.toml"
    toml.write_text('log_format = "json"\n')
    assert load_settings(toml, environ={}).log_format == "json"
    assert load_settings(None, environ={"ESL_LOG_FORMAT": "json"}).log_format == "json"
    assert load_settings(None, environ={}).log_format == "text"
    with pytest.raises(ConfigError, match=r"log_format: expected text or json, got 'yaml'"):
        load_settings(None, environ={"ESL_LOG_FORMAT": "yaml"})
    result = CliRunner().invoke(app, ["gateway", "--broker", "mqtt://127.0.0.1:1", "--radio", "sim://127.0.0.1:1",
                                      "--store", "s1", "--id", "gw1", "--log-format", "yaml"])
    assert result.exit_code == 2 and "log_format: expected text or json" in result.output, result.output
    assert "got 'yaml'" in result.output


async def test_esl_serve_writes_json_lines(tmp_path: Path) -> None:
    async with Processes(tmp_path / "procs") as procs:
        serve = procs.spawn("serve", esl_argv("serve", "--log-format", "json", "--data", str(tmp_path / "data"),
                                              "--http-port", "0", "--store", "s042"))
        await serve.start(ready=SERVE_READY, timeout=60)
        assert await serve.stop() == 0
        records = json_lines(serve.log)
    started = [r for r in records if r["logger"] == "eslserver.server" and "started" in str(r["message"])]
    assert len(started) == 1, serve.log
    assert all(r["store"] == "s042" and {"ts", "level", "logger", "message"} <= set(r) for r in records)


async def test_esl_gateway_writes_json_lines(tmp_path: Path) -> None:
    store = SimStore(StoreConfig(labels=1))
    async with mosquitto() as url, store, RadioServer(store, "127.0.0.1", 0) as radio, \
            Processes(tmp_path / "procs") as procs:
        host, port = radio.address
        gateway = procs.spawn("gateway", esl_argv("gateway", "-v", "--broker", url, "--radio", f"sim://{host}:{port}",
                                                  "--store", "s042", "--id", "gw7", "--data", str(tmp_path / "gw")),
                              env={"ESL_LOG_FORMAT": "json"})
        await gateway.start(ready=GATEWAY_READY, timeout=60)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not any(r["logger"] == "eslserver.gateway.bridge" for r in json_lines(gateway.log)):
            assert loop.time() < deadline, gateway.log
            await asyncio.sleep(0.05)
        await gateway.stop()
        records = json_lines(gateway.log)
    assert records and all(r["store"] == "s042" and r["gateway"] == "gw7" for r in records), gateway.log


def records_of(caplog: pytest.LogCaptureFixture, logger: str, match: Callable[[logging.LogRecord], bool]
               ) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and match(r)]


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def read_only(server: Server, on: bool) -> None:
    """The server's own write connection refuses (or accepts again) every write."""
    if on:
        async with server.db.transaction() as conn:  # between two of the server's transactions
            await conn.execute("PRAGMA query_only = ON")
    else:  # no transaction can be open on it now: BEGIN fails while it is read-only
        await server.db.writer.execute("PRAGMA query_only = OFF")


def outside(path: Path, statement: str, params: tuple[object, ...] = ()) -> None:
    """One statement from another connection to the server's database file (another process)."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as other, other:
        other.execute(statement, params)


def failure_records(caplog: pytest.LogCaptureFixture, logger: str) -> tuple[int, int, int]:
    """(errors, debug "failed again", "recovered") logged by `logger`."""
    errors = records_of(caplog, logger, lambda r: r.levelno >= logging.ERROR)
    again = records_of(caplog, logger, lambda r: "failed again" in r.getMessage())
    recovered = records_of(caplog, logger, lambda r: "recovered" in r.getMessage())
    return len(errors), len(again), len(recovered)


async def test_pipeline_failure_is_logged_once_and_its_recovery_once(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="eslserver.pipeline")
    settings = shop_settings(tmp_path / "data", None)
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        await server.ingest.submit(MILK, source="test", actor=SYSTEM)
        await server.labels.bind("AA:BB:CC:00:02:01", MILK["sku"], actor=SYSTEM, model="2.9-bwry")
        await until(lambda: server.pipeline.batches > 0)
        await read_only(server, True)
        outside(settings.database_path, "UPDATE labels SET dirty = dirty + 1")  # another writer marks it dirty
        server.pipeline.poke()
        await until(lambda: failure_records(caplog, "eslserver.pipeline")[1] >= 2)  # three attempts failed
        await read_only(server, False)
        await until(lambda: failure_records(caplog, "eslserver.pipeline")[2] > 0)
        row = await server.db.read_one("SELECT dirty FROM labels")
        assert row is not None and row["dirty"] == 0  # the label was drawn once it could be
    errors, _, recovered = failure_records(caplog, "eslserver.pipeline")
    assert (errors, recovered) == (1, 1), caplog.text
    (error,) = records_of(caplog, "eslserver.pipeline", lambda r: r.levelno >= logging.ERROR)
    assert error.exc_info is not None and "readonly database" in error.getMessage()
    assert getattr(error, "store") == settings.store


async def test_housekeeping_failure_is_logged_once_and_its_recovery_once(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="eslserver.server")
    settings = shop_settings(tmp_path / "data", None)
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        outside(settings.database_path, "ALTER TABLE jobs RENAME TO jobs_away")  # what the gauges count is gone
        await until(lambda: failure_records(caplog, "eslserver.server")[1] >= 1, timeout=30)
        outside(settings.database_path, "ALTER TABLE jobs_away RENAME TO jobs")
        await until(lambda: failure_records(caplog, "eslserver.server")[2] > 0, timeout=30)
    errors, _, recovered = failure_records(caplog, "eslserver.server")
    assert (errors, recovered) == (1, 1), caplog.text


async def test_dispatcher_failure_is_logged_once_and_its_recovery_once(tmp_path: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="eslserver.dispatch")
    async with mosquitto() as url, shop(tmp_path, url, labels=1) as s:
        await s.seed([MILK])
        mac = s.macs[0]
        await s.bind({mac: MILK["sku"]})
        await s.converged()
        await read_only(s.server, True)
        flash = json.dumps({"name": "led_control", "params": {**LED_FLASH, "repeat": 3}}).encode()
        long_ago = "2000-01-01T00:00:00.000000+00:00"
        outside(s.settings.database_path,  # a flash queued by another process
                "INSERT INTO jobs (store, mac, kind, state, next_attempt_at, created_at, command) "
                "VALUES (?, ?, 'command', 'queued', ?, ?, ?)", (s.settings.store, mac, long_ago, long_ago, flash))
        s.server.dispatcher.poke()
        await until(lambda: failure_records(caplog, "eslserver.dispatch")[1] >= 2)
        await read_only(s.server, False)
        await until(lambda: failure_records(caplog, "eslserver.dispatch")[2] > 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            job = await s.server.db.read_one("SELECT state FROM jobs WHERE kind = 'command'")
            if job is not None and job["state"] == "done":
                break
            assert loop.time() < deadline, f"the flash was never done: {job}"
            await asyncio.sleep(0.05)
    errors, _, recovered = failure_records(caplog, "eslserver.dispatch")
    assert (errors, recovered) == (1, 1), caplog.text
