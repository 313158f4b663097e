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


def test_demo_runs_a_chain_of_two_stores_on_one_server(tmp_path: Path) -> None:
    """``esl demo --stores 2``: one server, two stores, each with its own labels, gateway and POS;
    each store's POS feed reaches its own price history only."""
    data = tmp_path / "chain"
    proc = subprocess.run([sys.executable, "-c", "from eslserver.cli import main; main()", "demo", "--stores", "2",
                           "--labels", "8", "--http-port", "0", "--data", str(data), "--duration", "15",
                           "--feed-interval", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "chain of 2 stores (demo, demo-2)" in proc.stdout
    assert proc.stdout.count("  pos     user pos/") == 2  # a POS identity per store
    with sqlite3.connect(data / "esl.db") as conn:
        labels = dict(conn.execute("SELECT store, COUNT(*) FROM labels GROUP BY store").fetchall())
        shown = dict(conn.execute("SELECT store, COUNT(*) FROM labels WHERE state = 'ok' GROUP BY store").fetchall())
        fed = dict(conn.execute("SELECT store, COUNT(*) FROM price_history WHERE source = 'mqtt' "
                                "GROUP BY store").fetchall())
        stores = [r[0] for r in conn.execute("SELECT id FROM stores ORDER BY id")]
    assert stores == ["demo", "demo-2"] and labels == {"demo": 8, "demo-2": 8}
    assert shown.get("demo", 0) >= 4 and shown.get("demo-2", 0) >= 4, shown
    assert fed.get("demo", 0) > 0 and fed.get("demo-2", 0) > 0, fed
    assert len(list((data / "snapshots").glob("*.png"))) == 8
    assert len(list((data / "snapshots" / "demo-2").glob("*.png"))) == 8
