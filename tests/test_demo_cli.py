"""`esl demo` as a user runs it: one command, nothing else installed, a store that works."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path


def test_demo_runs_a_whole_store(tmp_path: Path) -> None:
    data = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", "from eslserver.cli import main; main()", "demo", "--labels", "20",
                             "--http-port", "0", "--data", str(data), "--duration", "15", "--feed-interval", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        lines: dict[str, str] = {}
        for line in proc.stdout:
            word = line.split()[0] if line.split() else ""
            lines.setdefault(word, line)
            if word == "screens":
                break
        http = lines["http"].split()[1]
        token = lines["token"].split()[1]
        assert lines["broker"].split()[1].startswith("mqtt://127.0.0.1:")
        req = urllib.request.Request(http + "api/v1/me", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert json.loads(resp.read())["role"] == "admin"
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "stopped: labels" in out
    with sqlite3.connect(data / "esl.db") as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM labels GROUP BY state").fetchall())
        fed = conn.execute("SELECT COUNT(*) FROM price_history WHERE source = 'mqtt'").fetchone()[0]
    assert sum(states.values()) == 20 and states.get("ok", 0) >= 10, states
    assert fed > 0  # the POS feed went through MQTT into the price history
    assert len(list((data / "snapshots").glob("*.png"))) == 20
