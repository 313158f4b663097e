"""`esl simulate` options and the in-process runner behind it."""

from __future__ import annotations

import asyncio

import pytest
from typer.testing import CliRunner

from eslserver.cli import app
from eslserver.gateway.links.loopback import LoopbackRadio
from simulator.run import SimulationConfig, parse_listen, run_simulation
from simulator.store import StoreConfig

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nowhere"], "HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "65535"),
        (["--loss", "1.5"], "loss"),
        (["--model", "9.9-nope"], "unknown label model"),
        (["--labels", "0"], "labels"),
    ],
)
def test_bad_options_are_refused(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["simulate", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_help_lists_the_options() -> None:
    result = runner.invoke(app, ["simulate", "--help"])
    assert result.exit_code == 0
    for option in ("--labels", "--listen", "--loss", "--corrupt", "--offline", "--seed", "--snapshots",
                   "--model", "--wake-interval"):
        assert option in result.output


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:7450") == ("127.0.0.1", 7450)
    assert parse_listen("[::1]:0") == ("::1", 0)
    with pytest.raises(ValueError, match="port must be a number"):
        parse_listen("host:abc")


async def test_runner_prints_address_and_summaries_then_stops() -> None:
    lines: list[str] = []
    listening = asyncio.Event()
    stop = asyncio.Event()

    def line(text: str) -> None:
        lines.append(text)
        listening.set()

    config = SimulationConfig(store=StoreConfig(labels=5, wake_interval_s=0.05), summary_interval_s=0.1)
    task = asyncio.create_task(run_simulation(config, print_line=line, stop=stop))
    await asyncio.wait_for(listening.wait(), 10)
    host, port = lines[0].split()[2].rsplit(":", 1)
    heard: list[str] = []
    async with LoopbackRadio(host, int(port)) as radio:
        radio.set_checkin_callback(lambda a, f, r: heard.append(a))
        await asyncio.sleep(0.35)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert lines[0].startswith("listening on 127.0.0.1:") and "5 labels" in lines[0]
    assert any(text.startswith("gateways=") and "labels=5" in text for text in lines[1:])
    assert lines[-1].startswith("stopped: labels=5")
    assert len(set(heard)) == 5
