"""`esl serve` on a database it cannot use stops at once with one line and status 1 (a garbage
file, pages overwritten with random bytes), and SIGTERM ends it whether it is starting (held
by a database another process keeps locked) or running. Real child processes, with timeouts:
a hang fails the test instead of holding the suite."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from tests.processes import esl_argv
from tests.test_cli_errors import _env, _errors
from tests.test_health import PAGE, _database_with_data, _overwrite_pages

_TIMEOUT_S = 60.0


def _serve(cwd: Path, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(esl_argv("serve", "--http-port", "0", "--data", str(data)), cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=_TIMEOUT_S)


def _database_file(data: Path) -> Path:
    return data / "esl.db"


def test_a_garbage_database_file_stops_the_start_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _database_file(data).write_bytes(random.Random(14).randbytes(20 * PAGE))
    done = _serve(tmp_path, data)
    assert done.returncode == 1, done.stderr
    errors = _errors(done.stderr)
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert errors[0].startswith("esl serve: cannot use the data directory") and "not a database" in errors[0]
    assert "--data" in errors[0]


async def test_a_database_with_overwritten_pages_stops_the_start_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = await _database_with_data(data)
    assert path == _database_file(data)
    _overwrite_pages(path, [3, 5])
    done = _serve(tmp_path, data)
    assert done.returncode == 1, done.stderr
    errors = _errors(done.stderr)
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "is corrupt (quick_check: " in errors[0] and "restore it from a backup" in errors[0], errors


def _wait_for(proc: subprocess.Popen[str], log: Path, text: str) -> None:
    deadline = time.monotonic() + _TIMEOUT_S
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, f"{text!r} never appeared: {log.read_text(errors='replace')}"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[str]) -> int:
    """SIGTERM, and the status once the process is gone (killed, and the test failed, if not)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError("the process ignored SIGTERM") from None


async def test_sigterm_ends_a_start_held_by_a_locked_database_and_a_running_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = await _database_with_data(data)
    log = tmp_path / "serve.log"
    argv = esl_argv("serve", "--http-port", "0", "--data", str(data), "--verbose")
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock: the start waits
        with log.open("w") as out:
            proc = subprocess.Popen(argv, cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                    text=True, start_new_session=True)
        try:
            _wait_for(proc, log, "'BEGIN IMMEDIATE'")  # its first write waits for the lock (SQLite's busy wait)
            assert _stop(proc) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert "eslserver: http://" not in log.read_text()  # it never finished starting
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with log.open("w") as out:  # the same database, unlocked: a normal start, and a normal stop
        proc = subprocess.Popen(argv, cwd=tmp_path, env=_env(), stdout=out, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    try:
        _wait_for(proc, log, "eslserver: http://")
        assert _stop(proc) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
