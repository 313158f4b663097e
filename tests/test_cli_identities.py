"""``esl gateways add|revoke``, ``esl identities add|list|revoke`` on a data directory, as an
operator runs them: a password printed once and stored only as its hash, careless input
refused in one line naming it, every change audited. (``esl broker-config`` and a running
server picking changes up: tests/test_security_mqtt.py.)"""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

from typer.testing import CliRunner

from eslserver.cli import app
from eslserver.mqtt_passwords import verify_password


def esl(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env={"NO_COLOR": "1"})
    return result.exit_code, result.stdout, result.stderr


def test_identities_are_made_listed_and_revoked_with_passwords_shown_once(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    code, _, err = esl("identities", "list", "--data", data)
    assert code == 1 and "no eslserver database" in err
    assert esl("tokens", "create", "--role", "admin", "--init", "--data", data)[0] == 0

    code, out, _ = esl("identities", "add", "--role", "pos", "--store", "demo", "till-1", "--json", "--data", data)
    assert code == 0
    first = json.loads(out)
    assert first["username"] == "pos/demo/till-1" and len(first["password"]) == 43
    code, out, err = esl("gateways", "add", "demo/gw1", "--data", data)
    assert code == 0 and out.splitlines()[0] == "username gateway/demo/gw1" and "broker:" in err
    gw_password = out.splitlines()[1].split()[1]

    code, _, err = esl("identities", "add", "--role", "pos", "--store", "demo", "till-1", "--data", data)
    assert code == 2 and "exists already" in err and "--reset" in err
    code, out, _ = esl("identities", "add", "--role", "pos", "--store", "demo", "till-1", "--reset", "--json",
                       "--data", data)
    assert code == 0 and json.loads(out)["password"] != first["password"]
    again = json.loads(out)["password"]

    db = tmp_path / "data" / "esl.db"
    with closing(sqlite3.connect(db)) as conn:
        stored = dict(conn.execute("SELECT username, password_hash FROM mqtt_identities").fetchall())
    assert verify_password(again, stored["pos/demo/till-1"]) and not verify_password(first["password"],
                                                                                     stored["pos/demo/till-1"])
    assert verify_password(gw_password, stored["gateway/demo/gw1"])
    on_disk = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("esl.db*"))
    assert again.encode() not in on_disk and gw_password.encode() not in on_disk

    code, out, _ = esl("identities", "list", "--json", "--data", data)
    listed = json.loads(out)
    assert [i["username"] for i in listed] == ["gateway/demo/gw1", "pos/demo/till-1"]
    assert all("password" not in key for i in listed for key in i)
    code, _, err = esl("gateways", "revoke", "demo/gw1", "--data", data)
    assert code == 0 and "revoked gateway/demo/gw1" in err and "went back to the queue" in err
    code, _, err = esl("identities", "revoke", "pos/demo/till-1", "--data", data)
    assert code == 0 and "revoked pos/demo/till-1" in err
    assert json.loads(esl("identities", "list", "--json", "--active", "--data", data)[1]) == []
    code, out, _ = esl("identities", "list", "--data", data)
    assert out.splitlines()[0].split() == ["USERNAME", "ROLE", "CREATED", "REVOKED"]
    assert len(out.splitlines()) == 3 and "-" not in out.splitlines()[1].split()[-1:]

    with closing(sqlite3.connect(db)) as conn:
        audited = conn.execute("SELECT action, target FROM audit WHERE target LIKE 'identity:%' ORDER BY id").fetchall()
    assert audited == [("identity.add", "identity:pos/demo/till-1"), ("identity.add", "identity:gateway/demo/gw1"),
                       ("identity.password", "identity:pos/demo/till-1"),
                       ("identity.revoke", "identity:gateway/demo/gw1"),
                       ("identity.revoke", "identity:pos/demo/till-1")]


def test_careless_input_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    assert esl("tokens", "create", "--role", "admin", "--init", "--data", data)[0] == 0
    for args, message in (
        (("gateways", "add", "gw1"), "STORE/ID: expected the store and the gateway id, e.g. demo/gw1, got 'gw1'"),
        (("gateways", "add", "demo/gw:1"), "gateway id must be 1-64 letters"),
        (("gateways", "add", "demo/gw1/x"), "gateway id must be 1-64 letters"),
        (("identities", "add", "--role", "gateway", "--store", "demo", "x"), "register gateways with esl gateways add"),
        (("identities", "add", "--role", "admin", "--store", "demo", "x"), "--role: expected one of pos, integration"),
        (("identities", "add", "--role", "pos", "--store", "de mo", "x"), "store must be"),
        (("identities", "revoke", "pos/demo/nobody"), "no identity 'pos/demo/nobody'"),
        (("identities", "revoke", "root"), "user name 'root' is not server/INSTANCE"),
        (("gateways", "revoke", "demo/gw9"), "no identity 'gateway/demo/gw9'"),
        (("identities", "revoke", "server/server"), "is a server's own identity: it cannot be revoked"),
    ):
        code, out, err = esl(*args, "--data", data)
        assert code == 2 and message in err, (args, err)
        assert "Traceback" not in err and out == "", (args, out)


def test_gateways_alone_still_lists_and_its_help_names_add_and_revoke() -> None:
    code, out, _ = esl("gateways", "--help")
    assert code == 0 and "add" in out and "revoke" in out and "--json" in out


def test_gateways_add_with_its_key_registers_both_in_one_step(tmp_path: Path) -> None:
    """``esl gateways add STORE/ID --key KEY``: the MQTT identity and the public key jobs are
    sealed to, audited; the printed command names the server's public key; a bad key changes
    nothing and names the option."""
    from eslserver.gateway.identity import load_or_create_key

    data = str(tmp_path / "data")
    assert esl("tokens", "create", "--role", "admin", "--init", "--data", data)[0] == 0
    key, _ = load_or_create_key(tmp_path / "gw" / "gateway.key")
    code, _, err = esl("gateways", "add", "demo/gw2", "--key", "zz", "--data", data)
    assert code == 2 and "--key" in err
    code, out, err = esl("gateways", "add", "demo/gw2", "--key", key.public.hex(), "--data", data)
    assert code == 0 and out.splitlines()[0] == "username gateway/demo/gw2"
    server_key = (tmp_path / "data" / "signing.key").exists()
    assert server_key and "--server-public-key " in err and "esl trust gateway" not in err
    with closing(sqlite3.connect(tmp_path / "data" / "esl.db")) as conn:
        stored = conn.execute("SELECT public_key FROM gateways WHERE store = 'demo' AND id = 'gw2'").fetchone()
        users = [r[0] for r in conn.execute("SELECT username FROM mqtt_identities")]
        actions = [r[0] for r in conn.execute("SELECT action FROM audit ORDER BY id")]
    assert bytes(stored[0]) == key.public and users == ["gateway/demo/gw2"]
    assert actions[-2:] == ["identity.add", "gateway.key"]
    code, _, err = esl("gateways", "add", "demo/gw3", "--data", data)  # no key yet: says how to add it
    assert code == 0 and "esl trust gateway demo/gw3" in err
