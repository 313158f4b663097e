"""Real `esl` processes for tests: start, wait until ready, kill -9, restart, always reap.

    async with Processes(tmp_path) as procs:
        sim = procs.spawn("simulate", esl_argv("simulate", "--labels", "30", "--listen", "127.0.0.1:0"))
        line = await sim.start(ready=r"listening on (\\S+):(\\d+)")       # the matching line
        server = procs.spawn("serve", esl_argv("serve"), env={"ESL_DATA_DIR": ...})
        await server.start(ready=SERVE_READY)
        server.kill()                                                # SIGKILL: a crash
        await server.start(ready=SERVE_READY)                        # the same command again
    # every child (and anything it spawned, e.g. render workers) is SIGKILLed and reaped here

Each child runs in its own session (process group), with stdout and stderr appended to
``{directory}/{name}.log`` (kept across restarts, shown in failure messages). `kill` sends
SIGKILL to the child itself first (the crash under test), then to what is left of its
process group, as a supervisor would before a restart: orphaned render workers of a killed
server must not pile up across restarts on a machine with two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

from eslserver.config import SIMULATOR_FACTORY_SECRET

__all__ = ["GATEWAY_READY", "SERVE_READY", "SIMULATE_READY", "ChildProcess", "Processes", "esl_argv",
           "trust_gateway"]

REPO = Path(__file__).resolve().parents[1]

SERVE_READY = r"eslserver: http://\S+:(\d+)"
"""What `esl serve` prints once its database, MQTT connection and HTTP site are up."""
SIMULATE_READY = r"listening on (\S+):(\d+)"
GATEWAY_READY = r"gateway \S+ of store \S+:"


def esl_argv(*args: str) -> list[str]:
    """The `esl` command line with this interpreter (no reliance on a console script on PATH)."""
    return [sys.executable, "-c", "from eslserver.cli import main; main()", *args]


async def trust_gateway(server_data: Path, gateway_data: Path, store: str, gateway: str, *,
                        database_url: str | None = None) -> list[str]:
    """What an operator does once per gateway, done on the two data directories: the server's
    signing key and the gateway's own key are made (as their first start would), the gateway is
    registered (``esl gateways add``: its MQTT identity, so the server listens to it) and its
    public key too (``esl trust gateway``); returns the ``esl gateway`` arguments that give it
    the server's public key. (The test brokers let anyone in: the identity's password is not used.)
    With `database_url`, the server's data is on that PostgreSQL database."""
    from eslserver.config import load_settings
    from eslserver.db.database import open_database
    from eslserver.gateway.bridge import GatewayConfig
    from eslserver.gateway.identity import load_or_create_key
    from eslserver.identities import add_identity
    from eslserver.mqtt_access import Identity, Role
    from eslserver.server import SYSTEM
    from eslserver.signing import load_signing_key
    from eslserver.trust import register_gateway_key

    settings = load_settings(None, environ={}, overrides={"data_dir": server_data})
    signing = load_signing_key(settings)
    key, _ = load_or_create_key(GatewayConfig(store=store, gateway_id=gateway, data_dir=gateway_data).key_path)
    async with open_database(database_url or settings.database_path) as db:
        await add_identity(db, Identity(Role.GATEWAY, gateway, store), SYSTEM, reset=True)
        await register_gateway_key(db, store, gateway, key.public, actor=SYSTEM)
    return ["--server-public-key", signing.public.hex()]


class ChildProcess:
    """One command that can be started, killed and started again; owned by `Processes`."""

    def __init__(self, name: str, argv: Sequence[str], *, log_path: Path, cwd: Path,
                 env: Mapping[str, str]) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env)
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._pgid: int | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        assert self._proc is not None, f"{self.name} was never started"
        return self._proc.pid

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return f"--- {self.name} log ({self.log_path}) ---\n" + "\n".join(self.log.splitlines()[-lines:])

    async def start(self, *, ready: str | None = None, timeout: float = 30.0) -> re.Match[str] | None:
        """Start the command; with `ready`, wait until a line it writes *from now on* matches
        that regular expression and return the match (RuntimeError if it exits first,
        TimeoutError after `timeout`)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.reap_group()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log_file:
            log_file.write(f"=== start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            log_file.flush()
            self._proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True)
        self._pgid = self._proc.pid
        self.starts += 1
        if ready is None:
            return None
        pattern = re.compile(ready)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            text = self.log_path.read_bytes()[offset:].decode(errors="replace")
            match = pattern.search(text)
            if match is not None:
                return match
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._proc.returncode} before it was ready\n"
                                   + self.tail())
            if loop.time() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout} s (waiting for {ready!r})\n"
                                   + self.tail())
            await asyncio.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL now (the crash under test), reap it, then SIGKILL what is left of its group."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        self.reap_group()

    async def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM (a clean shutdown), SIGKILL after `grace_s`; the exit code (None if never run)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + grace_s
            while proc.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.02)
        self.kill()
        return proc.returncode

    def reap_group(self) -> None:
        """SIGKILL every process left in the child's process group (orphans), if any."""
        pgid, self._pgid = self._pgid, None
        if pgid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if self._proc is not None and self._proc.pid == pgid:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)


class Processes:
    """Owner of every child a test starts: all are killed (group and all) when it exits."""

    def __init__(self, directory: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        base = dict(os.environ if env is None else env)
        # no stray esl.toml or ESL_* settings of the developer's shell; unbuffered output
        base = {k: v for k, v in base.items() if not k.startswith("ESL_")}
        # the simulated labels' factory secret, given as an operator gives their vendor's:
        # `esl serve` refuses to fall back on it by itself
        base["ESL_FACTORY_SECRET"] = SIMULATOR_FACTORY_SECRET
        base["PYTHONUNBUFFERED"] = "1"
        base["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH", "")) if p)
        self.env = base
        self.children: list[ChildProcess] = []

    def spawn(self, name: str, argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> ChildProcess:
        """A child (not started yet) logging to ``{directory}/{name}.log``."""
        child = ChildProcess(name, argv, log_path=self.directory / f"{name}.log", cwd=self.directory,
                             env={**self.env, **(env or {})})
        self.children.append(child)
        return child

    def logs(self) -> str:
        """The tail of every child's log (for assertion messages)."""
        return "\n".join(child.tail() for child in self.children)

    def kill_all(self) -> None:
        for child in reversed(self.children):
            child.kill()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.kill_all()
