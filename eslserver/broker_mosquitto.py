"""The Mosquitto path of the embedded broker: a ``mosquitto`` child process owned by the server.

Why a child process: Mosquitto is the broker stores run in production and the one our CI
machines test against; when it is installed, `esl serve` and `esl demo` get the same broker
behaviour on a laptop as in a store. The process gets a generated configuration in its own
directory (one listener on ``host:port``, no persistence, a queue large enough for a gateway or
the server being away for a while, errors and warnings logged to a file there, never to syslog)
and, given access rules, the password and ACL files they make (``passwd``, ``acl``, 0600 in
that directory, anonymous clients refused, each client's session keyed by its user name so that
no identity can take over another's); `MosquittoProcess.set_access` rewrites them and
makes Mosquitto read them again (SIGHUP): Mosquitto 2 then drops at once every connected
client the new files no longer let in. Without access rules every client is let in (tests).
The process is stopped with the server: SIGTERM in `MosquittoProcess.aclose`, SIGKILL at
interpreter exit if still running, and on Linux the kernel sends it SIGTERM if our process dies
first (``PR_SET_PDEATHSIG``), so a crash leaves no broker holding the port. It runs in its own
session, so Ctrl-C in a terminal reaches the server, which then closes its connections first.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from eslserver.private_files import write_private

if TYPE_CHECKING:
    from eslserver.mqtt_access import AccessSnapshot

__all__ = ["MAX_QUEUED_MESSAGES", "MosquittoProcess", "find_mosquitto"]

MAX_QUEUED_MESSAGES = 100_000
"""Per persistent session while its client is away (Mosquitto's default, 1,000, drops the rest)."""

_START_TIMEOUT_S = 5.0
_STOP_GRACE_S = 3.0
_FREE_WAIT_S = 2.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def find_mosquitto() -> str | None:
    """The ``mosquitto`` binary on PATH, or in the sbin directories PATH often lacks; None if absent."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto", "/opt/homebrew/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child when the process that started it ends, even by SIGKILL."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class MosquittoProcess:
    """One ``mosquitto`` process listening on ``host:port`` (a fixed, non-zero port)."""

    def __init__(self, binary: str, directory: Path | None = None, *, access: AccessSnapshot | None = None) -> None:
        self.binary = binary
        self.access = access
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="esl-mosquitto-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "mosquitto.log"

    def log_tail(self, lines: int = 5) -> str:
        """The last lines Mosquitto wrote (its errors), for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    @property
    def password_path(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl_path(self) -> Path:
        return self.directory / "acl"

    def _write_access(self) -> list[str]:
        """Write the password and ACL files of `access`; the configuration lines that use them."""
        if self.access is None:
            return ["allow_anonymous true"]
        header = "written by the eslserver embedded broker: every change of identities rewrites it"
        write_private(self.password_path, self.access.password_file(header))
        write_private(self.acl_path, self.access.acl_file(header))
        # a client's session is its identity's: another identity cannot take it over (or wipe it)
        # by connecting with its client id
        return ["allow_anonymous false", f"password_file {self.password_path}", f"acl_file {self.acl_path}",
                "use_username_as_clientid true"]

    async def set_access(self, access: AccessSnapshot) -> None:
        """Rewrite the password and ACL files and make Mosquitto read them again (SIGHUP)."""
        if self.access is None:
            raise RuntimeError("this mosquitto was started without access rules")
        self.access = access
        self._write_access()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGHUP)

    def _write_config(self, host: str, port: int) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {port} {host}",
            *self._write_access(),
            "persistence false",
            f"max_queued_messages {MAX_QUEUED_MESSAGES}",
            "log_dest stderr",  # our stderr file below: not syslog, and it has start-up errors too
            "log_type error",
            "log_type warning",
            "set_tcp_nodelay true",  # small job and event messages go out at once
            # started as root, Mosquitto would switch to user 'mosquitto' (and could not write its log)
            f"user {getpass.getuser()}",
        ]
        path = self.directory / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    async def start(self, host: str, port: int) -> None:
        """Start Mosquitto and return once it accepts connections; `OSError` naming the port if
        it is taken, `RuntimeError` with Mosquitto's own words if it exits."""
        if self._proc is not None:
            raise RuntimeError("mosquitto is already running")
        await _wait_free(host, port)  # or a broker already on the port would answer in its place
        config = self._write_config(host, port)
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                [self.binary, "-c", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent if _LIBC is not None else None,  # noqa: PLW1509
            )
        atexit.register(self._kill_now)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._forget()
                raise RuntimeError(f"mosquitto exited with status {code}: {self.log_tail() or 'no output'}")
            if await _accepts(host, port) and self._proc.poll() is None:
                return
            if loop.time() > deadline:
                await self.aclose()
                raise RuntimeError(f"mosquitto did not listen on {host}:{port} within {_START_TIMEOUT_S} s: "
                                   f"{self.log_tail() or 'no output'}")
            await asyncio.sleep(0.02)

    async def aclose(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; returns once the process is gone. Safe twice."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _STOP_GRACE_S
            while proc.poll() is None and loop.time() < deadline:
                await asyncio.sleep(0.01)
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        self._forget()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _forget(self) -> None:
        self._proc = None
        atexit.unregister(self._kill_now)

    def _kill_now(self) -> None:
        """At interpreter exit: a broker nobody closed must not outlive us."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


async def _wait_free(host: str, port: int) -> None:
    """Return once `port` can be bound; a broker of a crashed predecessor may need a moment
    to exit (its SIGTERM comes with our predecessor's death), a real squatter does not go."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _FREE_WAIT_S
    while True:
        try:
            _check_free(host, port)
            return
        except OSError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


def _check_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Mosquitto binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise OSError(exc.errno, f"port {port} on {host} is in use ({exc.strerror})") from None


async def _accepts(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 0.5)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True
