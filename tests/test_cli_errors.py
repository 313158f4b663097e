"""Errors an operator can act on: one line, a non-zero status, no traceback — `esl serve` and
`esl demo` on a busy port or an unusable data directory, `esl tokens create` where there is no
database, `esl pair` that paired nothing, output piped into a reader that stops early; and
help and tables without noise. The commands run as the user runs them (a child process), or
through typer's CliRunner against a real server."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from eslserver.cli import app
from eslserver.cli.errors import how_to_change
from eslserver.config import SIMULATOR_FACTORY_SECRET
from tests.test_api_schema import ApiClient, api  # noqa: F401  (fixture)

ESL = [sys.executable, "-c", "from eslserver.cli import main; main()"]


def _env(**extra: str) -> dict[str, str]:
    """The environment of an `esl` child: none of the developer's ``ESL_*``, and the simulated
    labels' factory secret given explicitly (`esl serve` does not fall back on it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_")}
    return {**env, "NO_COLOR": "1", "ESL_FACTORY_SECRET": SIMULATOR_FACTORY_SECRET, **extra}


def _esl(cwd: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ESL, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _errors(stderr: str) -> list[str]:
    """stderr without the log lines (``2026-12-04 19:00:00,000 INFO …``)."""
    return [line for line in stderr.splitlines() if line and not line[:4].isdigit()]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:  # listening: the port is in use, as by another server
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_a_busy_http_port_is_one_line_naming_the_port_and_the_flag(command: str, busy_port: int,
                                                                   tmp_path: Path) -> None:
    result = _esl(tmp_path, command, "--http-port", str(busy_port), "--data", str(tmp_path / "data"),
                  "--broker", "mqtt://127.0.0.1:1", *(["--labels", "2"] if command == "demo" else []))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert _errors(result.stderr) == [
        f"esl {command}: HTTP port {busy_port} on 127.0.0.1 is already in use (another eslserver, or another "
        f"program); change it with --http-port, http_port in esl.toml or ESL_HTTP_PORT"]
    assert result.stdout == ""


def test_an_unusable_data_directory_is_one_line_naming_it_and_the_flag(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = _esl(tmp_path, "serve", "--http-port", "0", "--data", str(blocker / "data"),
                  "--broker", "mqtt://127.0.0.1:1")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = _errors(result.stderr)
    assert line.startswith(f"esl serve: cannot use the data directory {blocker / 'data'}: Not a directory")
    assert line.endswith("; change it with --data, data_dir in esl.toml or ESL_DATA_DIR")


def test_a_gateway_with_an_unusable_data_directory_says_so_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = _esl(tmp_path, "gateway", "--broker", "mqtt://127.0.0.1:1", "--radio", "sim://127.0.0.1:1",
                  "--store", "s1", "--id", "gw1", "--data", str(blocker / "gw"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    (line,) = _errors(result.stderr)
    # the first file it makes there is its own key (then its spool)
    assert line.startswith(f"esl gateway: gateway key {blocker / 'gw'}/") and "Not a directory" in line
    assert line.endswith("; choose a writable directory with --data")


def test_every_setting_says_where_it_comes_from() -> None:
    assert how_to_change("http_host") == "change it with --http-host, http_host in esl.toml or ESL_HTTP_HOST"
    assert how_to_change("render_workers") == "change it with render_workers in esl.toml or ESL_RENDER_WORKERS"


def test_tokens_create_refuses_a_directory_without_a_database(tmp_path: Path) -> None:
    result = _esl(tmp_path, "tokens", "create", "--role", "pos")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: no eslserver database in data directory {tmp_path.resolve() / 'esl-data'} (no esl.db): point at "
        "the server's with --data DIR (or data_dir in esl.toml, or ESL_DATA_DIR), or add --init to create a new "
        "one there"]
    assert not (tmp_path / "esl-data").exists()  # nothing created behind the operator's back
    result = _esl(tmp_path, "tokens", "list")
    assert result.returncode == 1 and "or start the server once there first" in result.stderr
    result = _esl(tmp_path, "tokens", "create", "--role", "pos", "--init")
    assert result.returncode == 0 and result.stdout.startswith("esl_"), result.stderr
    assert (tmp_path / "esl-data" / "esl.db").is_file()
    result = _esl(tmp_path, "tokens", "create", "--role", "tech")  # there now: no --init needed
    assert result.returncode == 0 and result.stdout.startswith("esl_") and result.stderr == ""


async def test_pair_exits_non_zero_when_nothing_was_paired(api: ApiClient, tmp_path: Path) -> None:
    env = {"ESL_CLI_CONFIG": str(tmp_path / "none.toml"), "ESL_SERVER": api.base, "ESL_TOKEN": api.tokens["tech"]}
    for scans, summary in (("", "0 paired, 0 wrong scans"), ("zzz\n\n", "0 paired, 1 wrong scans")):
        result = await asyncio.to_thread(CliRunner().invoke, app, ["pair"], input=scans, env=env,
                                         catch_exceptions=False)
        assert result.exit_code == 1, (scans, result.stdout, result.stderr)
        assert summary in result.stderr
    result = await asyncio.to_thread(CliRunner().invoke, app, ["pair", "zzz", "100"], env=env,
                                     catch_exceptions=False)
    assert result.exit_code == 1 and "'zzz' is not a label" in result.stderr


def _into_closed_pipe(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run ``esl args`` with stdout a pipe whose reader has gone (``| head`` after its lines)."""
    read, write = os.pipe()
    os.close(read)
    try:
        return subprocess.run([*ESL, *args], stdout=write, stderr=subprocess.PIPE, env=env, timeout=60)
    finally:
        os.close(write)


async def test_output_into_a_closed_pipe_ends_quietly(api: ApiClient, tmp_path: Path) -> None:
    env = _env(ESL_CLI_CONFIG=str(tmp_path / "none.toml"), ESL_SERVER=api.base, ESL_TOKEN=api.tokens["tech"])
    for args in (["templates", "list"], ["labels", "--json"], ["--help"]):
        result = await asyncio.to_thread(_into_closed_pipe, args, env)
        assert result.stderr == b"", (args, result.stderr.decode())  # no BrokenPipeError, no "Exception ignored"
        assert result.returncode == 1, args


def test_templates_list_has_a_header_like_the_other_tables() -> None:
    result = CliRunner().invoke(app, ["templates", "list"])
    assert result.exit_code == 0
    header, *rows = result.stdout.splitlines()
    assert header.split("\t") == ["NAME", "MODEL", "SIZE", "COLOURS", "DESCRIPTION"]
    cells = {r.split("\t")[0]: r.split("\t") for r in rows}
    assert cells["promo-4.2"][1:4] == ["4.2-bwry", "400x300", "bwry"]


@pytest.mark.parametrize("command", [[], ["serve"], ["demo"], ["gateway"], ["pair"], ["labels"],
                                     ["tokens", "create"], ["templates", "check"], ["render"]])
def test_help_shows_no_type_beside_flags(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.output
    flags = [line.split() for line in result.output.splitlines() if line.strip().startswith(("--help", "-v,"))]
    helps = [[w for w in words if not w.startswith("-")][0] for words in flags]
    assert flags and all(word in ("Show", "Log") for word in helps), flags  # the flag, then its help
