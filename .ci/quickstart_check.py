#!/usr/bin/env python3
"""What a new user meets, checked on this machine in fresh virtual environments.

    python3 .ci/quickstart_check.py quickstart   # the README's first command, in a new venv
    python3 .ci/quickstart_check.py gateway      # the gateway-only install, in another new venv

``quickstart`` runs, in the repository, exactly ``python3 -m pip install -e . && esl demo``
with the new venv's ``python3`` and ``esl`` first on PATH and no dev extras, so that a test-only
package can never again hide a missing runtime dependency. The demo must come up healthy
(``/healthz``), labels must reach state ok (``/metrics``, no token needed) and their screens
must be written as PNG files; Ctrl-C (SIGINT) must then stop it cleanly. Its data goes to a
temporary directory (``ESL_DATA_DIR``), so the clone is not dirtied.

``gateway`` installs the gateway as the README tells a small board to (the packages of
``requirements/gateway.txt``, then the project with ``--no-deps``, from a copy of the tree),
checks that numpy and the renderer are absent, runs ``esl --version`` and ``esl gateway
--help``, then a real gateway for a few seconds: a Mosquitto started here on a free port, the
radio of ``esl simulate`` (from the quickstart's full venv when given, else this machine's
``esl``), and the gateway's retained ``online`` status read back by a subscriber.

Standard library only: it must run before anything is installed. Exit status 1 with one
``FAILED:`` line and the output of the command that failed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[1]
README_COMMAND = "python3 -m pip install -e . && esl demo"
INSTALL_TIMEOUT_S = 900.0
DEMO_READY_TIMEOUT_S = 120.0
LABELS_OK_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


class CheckFailed(Exception):
    """One check that did not hold; the message says which and what was seen."""


# -- helpers -------------------------------------------------------------------------------------


class Child:
    """A command in its own process group, its output (stdout and stderr) collected."""

    def __init__(self, name: str, argv: Sequence[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.name = name
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     errors="replace", start_new_session=True)
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float, what: str) -> re.Match[str]:
        regex = re.compile(pattern, re.MULTILINE)
        return _until(self, what, timeout, lambda: (regex.search(self.output()), "the output below"))

    def interrupt(self, timeout: float) -> int:
        """SIGINT to the whole group, as Ctrl-C in a terminal does; the exit status."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise CheckFailed(f"{self.name} still running {timeout:.0f} s after Ctrl-C (SIGINT)") from None
        self._reader.join(5)
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # anything the command left behind


def run(argv: Sequence[str], *, env: dict[str, str], cwd: Path = REPO, timeout: float = 120.0,
        what: str) -> str:
    """Run a command to completion; its output, or CheckFailed with that output."""
    try:
        done = subprocess.run(list(argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{what}: still running after {timeout:.0f} s: {' '.join(argv)}") from None
    out = done.stdout + done.stderr
    if done.returncode != 0:
        raise CheckFailed(f"{what}: `{' '.join(argv)}` exited with status {done.returncode}\n{out}")
    return out


def new_venv(path: Path) -> dict[str, str]:
    """A fresh virtual environment at `path`; the environment with its bin first on PATH."""
    run([sys.executable, "-m", "venv", str(path)], env=dict(os.environ), what="python3 -m venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PATH=f"{path / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(path),
               PYTHONUNBUFFERED="1")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            return answer.status, answer.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def venv_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB"


# -- quickstart ----------------------------------------------------------------------------------


def check_quickstart(venv: Path, work: Path) -> None:
    work.mkdir(parents=True)
    env = new_venv(venv)
    data = work / "esl-data"
    env["ESL_DATA_DIR"] = str(data)  # instead of ./esl-data: the clone stays clean
    if not port_free(8080):  # the README's default; the address is read from the output anyway
        env["ESL_HTTP_PORT"] = "0"
        print("quickstart: port 8080 is busy here; the demo gets a free port (ESL_HTTP_PORT=0)")
    print(f"quickstart: `{README_COMMAND}` in {REPO} with {venv / 'bin'} first on PATH")
    started = time.monotonic()
    demo = Child("the README's first command", ["bash", "-c", README_COMMAND], cwd=REPO, env=env)
    try:
        match = demo.wait_for(r"^\s*http\s+(http://\S+?)/?\s", INSTALL_TIMEOUT_S + DEMO_READY_TIMEOUT_S,
                              "demo address (`  http    http://HOST:PORT/`)")
        base = match[1]
        print(f"quickstart: installed and started in {time.monotonic() - started:.0f} s at {base}")
        _wait_healthy(base, demo)
        ok = _wait_labels_ok(base, demo)
        screens = _snapshots(data / "snapshots", demo)
        print(f"quickstart: /healthz ok, {ok:.0f} labels ok, {screens} PNG screens in {data / 'snapshots'}")
        status = demo.interrupt(STOP_TIMEOUT_S)
        if status != 0:
            raise CheckFailed(f"esl demo exited with status {status} after Ctrl-C (SIGINT), expected 0")
        if "Traceback" in demo.output():
            raise CheckFailed("esl demo printed a traceback")
        print(f"quickstart: stopped cleanly by Ctrl-C; venv {mb(venv_size(venv))}")
    except CheckFailed as exc:
        tail = "\n".join(demo.output().splitlines()[-80:])
        raise CheckFailed(f"{exc}\n--- output of `{README_COMMAND}` (last 80 lines) ---\n{tail}") from None
    finally:
        demo.kill()


def _until(child: Child, what: str, timeout: float, probe: Callable[[], tuple[T | None, str]]) -> T:
    """Call `probe` until it returns a value (not None); its second item says what it saw
    last, for the failure message. CheckFailed if `child` exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        value, seen = probe()
        if value is not None:
            return value
        if child.proc.poll() is not None:
            raise CheckFailed(f"{child.name} exited with status {child.proc.returncode} before {what}")
        if time.monotonic() > deadline:
            raise CheckFailed(f"no {what} within {timeout:.0f} s (last seen: {seen})")
        time.sleep(0.5)


def _get(url: str) -> tuple[int, str]:
    try:
        return http_get(url)
    except OSError as exc:
        return 0, str(exc)


def _wait_healthy(base: str, demo: Child) -> None:
    def probe() -> tuple[bool | None, str]:
        status, body = _get(f"{base}/healthz")
        return (True if status == 200 else None), f"HTTP {status}: {body[:200]}"

    _until(demo, f"healthy {base}/healthz", DEMO_READY_TIMEOUT_S, probe)


def _wait_labels_ok(base: str, demo: Child) -> float:
    metric = re.compile(r'^esl_labels\{[^}]*state="ok"[^}]*\}\s+(\S+)$', re.MULTILINE)

    def probe() -> tuple[float | None, str]:
        status, body = _get(f"{base}/metrics")
        match = metric.search(body) if status == 200 else None
        if match is None:
            return None, f"/metrics HTTP {status}" + (", no esl_labels{state=\"ok\"}" if status == 200 else "")
        return (float(match[1]) if float(match[1]) > 0 else None), f'esl_labels{{state="ok"}} {match[1]}'

    return _until(demo, "label in state ok", LABELS_OK_TIMEOUT_S, probe)


def _snapshots(folder: Path, demo: Child) -> int:
    def probe() -> tuple[int | None, str]:
        pngs = [p for p in folder.rglob("*.png") if p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"] \
            if folder.is_dir() else []
        return (len(pngs) or None), f"{len(pngs)} PNG files under {folder}"

    return _until(demo, "PNG label screen", 30.0, probe)


# -- gateway-only install ------------------------------------------------------------------------


def check_gateway(venv: Path, work: Path, full_venv: Path | None) -> None:
    work.mkdir(parents=True)
    env = new_venv(venv)
    src = work / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", "esl-data", "esl-demo", "build", "dist", "*.egg-info", "__pycache__", ".hypothesis",
        ".pytest_cache", ".benchmarks", ".mypy_cache", ".ruff_cache"))
    print(f"gateway: `python3 -m pip install -r requirements/gateway.txt && python3 -m pip install "
          f"--no-deps .` in a copy of the tree, into {venv}")
    run(["bash", "-c", "python3 -m pip install -q -r requirements/gateway.txt && python3 -m pip install -q --no-deps ."],
        env=env, cwd=src, timeout=INSTALL_TIMEOUT_S, what="gateway-only install")
    for absent in ("numpy", "numba", "PIL", "jinja2", "qrcode", "zxingcpp", "aiohttp"):
        probe = subprocess.run([str(venv / "bin" / "python3"), "-c", f"import {absent}"], env=env,
                               capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            raise CheckFailed(f"the gateway-only install brought {absent}, which a gateway does not need")
    version = run(["esl", "--version"], env=env, cwd=work, what="esl --version").strip()
    run(["esl", "gateway", "--help"], env=env, cwd=work, what="esl gateway --help")
    print(f"gateway: {version}; `esl gateway --help` ok; no numpy, numba, Pillow, Jinja2, qrcode, zxing-cpp")
    _live_gateway(env, work, full_venv)
    print(f"gateway: venv {mb(venv_size(venv))}"
          + (f" (the full quickstart venv: {mb(venv_size(full_venv))})" if full_venv is not None else ""))


def _live_gateway(env: dict[str, str], work: Path, full_venv: Path | None) -> None:
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if mosquitto is None:
        raise CheckFailed("mosquitto not found (apt-get install mosquitto): cannot run the gateway for real")
    port = free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    children: list[Child] = []
    try:
        broker = Child("mosquitto", [mosquitto, "-c", str(conf)], cwd=work, env=dict(os.environ))
        children.append(broker)
        _wait_port(port, broker)
        sim_env = dict(os.environ, PYTHONUNBUFFERED="1")
        if full_venv is not None:
            sim_env["PATH"] = f"{full_venv / 'bin'}{os.pathsep}{sim_env.get('PATH', '')}"
        sim = Child("esl simulate", ["esl", "simulate", "--labels", "3", "--listen", "127.0.0.1:0"],
                    cwd=work, env=sim_env)
        children.append(sim)
        listen = sim.wait_for(r"listening on (\S+):(\d+)", 60, "`listening on HOST:PORT`")
        gateway = Child("esl gateway (gateway-only install)",
                        ["esl", "gateway", "--broker", f"mqtt://127.0.0.1:{port}", "--radio",
                         f"sim://{listen[1]}:{listen[2]}", "--store", "s1", "--id", "gw1", "--data",
                         str(work / "gw-data")], cwd=work, env=env)
        children.append(gateway)
        gateway.wait_for(r"gateway gw1 of store s1:", 60, "start-up line")
        topic = "esl/s1/gateway/gw1/status"
        payload = retained_message("127.0.0.1", port, topic, timeout=20)
        if payload != b"online":
            raise CheckFailed(f"{topic} is {payload!r}, expected b'online'")
        status = gateway.interrupt(STOP_TIMEOUT_S)
        if status != 0:
            raise CheckFailed(f"esl gateway exited with status {status} after Ctrl-C (SIGINT), expected 0")
        print(f"gateway: connected to a real broker, {topic} = online (retained), stopped cleanly")
    except CheckFailed as exc:
        outputs = "".join(f"\n--- {c.name} output ---\n{c.output()}" for c in children)
        raise CheckFailed(f"{exc}{outputs}") from None
    finally:
        for child in reversed(children):
            child.kill()


def _wait_port(port: int, broker: Child) -> None:
    def probe() -> tuple[bool | None, str]:
        with socket.socket() as s:
            return (True if s.connect_ex(("127.0.0.1", port)) == 0 else None), f"port {port} closed"

    _until(broker, f"mosquitto listening on port {port}", 10.0, probe)


def retained_message(host: str, port: int, topic: str, timeout: float) -> bytes:
    """The first message on `topic` an MQTT 3.1.1 subscriber gets (the retained one, if any)."""

    def packet(kind: int, body: bytes) -> bytes:
        size, length = len(body), b""
        while True:
            byte, size = size % 128, size // 128
            length += bytes([byte | (0x80 if size else 0)])
            if not size:
                return bytes([kind]) + length + body

    def utf8(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("!H", len(raw)) + raw

    def read_packet(sock: socket.socket) -> tuple[int, bytes]:
        kind = _recv(sock, 1)[0]
        size, shift = 0, 0
        while True:
            byte = _recv(sock, 1)[0]
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return kind, _recv(sock, size)

    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(packet(0x10, utf8("MQTT") + bytes([4, 0x02]) + struct.pack("!H", 30)
                            + utf8(f"quickstart-check-{os.getpid()}")))
        kind, body = read_packet(sock)
        if kind != 0x20 or body[1:2] != b"\x00":
            raise CheckFailed(f"broker refused the check's connection: {kind:#x} {body!r}")
        sock.sendall(packet(0x82, struct.pack("!H", 1) + utf8(topic) + b"\x00"))
        while True:
            kind, body = read_packet(sock)
            if kind >> 4 == 3:  # PUBLISH, QoS 0
                (length,) = struct.unpack("!H", body[:2])
                if body[2:2 + length].decode() == topic:
                    return body[2 + length:]


def _recv(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        try:
            chunk = sock.recv(n - len(out))
        except TimeoutError:
            raise CheckFailed("no message from the broker in time") from None
        if not chunk:
            raise CheckFailed("the broker closed the check's connection")
        out += chunk
    return out


# -- main ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checks", nargs="+", choices=("quickstart", "gateway"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (venvs, data)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="esl-quickstart-"))
    full = work / "venv-full"
    try:
        for check in args.checks:
            started = time.monotonic()
            if check == "quickstart":
                check_quickstart(full, work / "quickstart")
            else:
                check_gateway(work / "venv-gateway", work / "gateway",
                              full if (full / "bin" / "esl").exists() else None)
            print(f"{check}: passed in {time.monotonic() - started:.0f} s")
    except CheckFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
