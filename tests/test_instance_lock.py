"""One server per SQLite data directory: a second ``esl serve`` on it stops at once with one
line and a non-zero exit, short commands beside the running server keep working, and the lock
goes with the process that held it, however it ended."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from eslserver.instance_lock import LOCK_NAME, InstanceLock
from eslserver.server import Server
from eslserver.startup import StartupError
from tests.pipeline_shop import shop_settings


async def _esl(cwd: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESL_")}
    env["ESL_FACTORY_SECRET"] = "f" * 64
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from eslserver.cli import main; main()", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_second_serve_on_the_same_data_directory_refuses_in_one_line(tmp_path: Path) -> None:
    settings = shop_settings(tmp_path / "data", None)
    async with Server(settings, mqtt=False, http=False, render_processes=False):
        code, out, err = await _esl(tmp_path, "serve", "--data", str(settings.data_dir), "--http-port", "0")
        assert code != 0
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1, err
        assert "already serving" in lines[0] and f"pid {os.getpid()}" in lines[0], lines[0]
        assert "Traceback" not in err + out

        # a short command beside the running server still works
        code, out, err = await _esl(tmp_path, "tokens", "create", "--role", "tech", "--data", str(settings.data_dir))
        assert code == 0, err

        # and moving the data to PostgreSQL waits for the server to stop: nothing is copied half-written
        code, out, err = await _esl(tmp_path, "db", "migrate-to", "postgresql://postgres@127.0.0.1:5432/never",
                                    "--data", str(settings.data_dir))
        assert code == 1 and "already serving" in err, err

        with pytest.raises(StartupError, match="already serving"):  # in-process, the same
            async with Server(settings, mqtt=False, http=False, render_processes=False):
                pass
    # stopped: the next server starts
    async with Server(settings, mqtt=False, http=False, render_processes=False) as again:
        assert await again.db.read_one("SELECT 1") is not None


async def test_the_lock_dies_with_its_process_even_on_kill_9(tmp_path: Path) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c",
        "import sys, time; from pathlib import Path; from eslserver.instance_lock import InstanceLock; "
        "InstanceLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)", str(tmp_path),
        stdout=asyncio.subprocess.PIPE)
    assert holder.stdout is not None
    assert (await asyncio.wait_for(holder.stdout.readline(), 30)).strip() == b"held"
    lock = InstanceLock(tmp_path)
    with pytest.raises(StartupError, match=f"pid {holder.pid}"):
        lock.acquire()
    holder.send_signal(signal.SIGKILL)
    await holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the stale file stays, and blocks nothing
    lock.acquire()
    lock.release()
    lock.release()  # twice is fine
