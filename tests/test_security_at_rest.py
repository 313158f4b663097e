"""Data at rest and key hygiene (issue 13, item 6): what a copy of the data directory, a
careless operator or a reader of the logs can get.

- Files: the database (with ``-wal`` and ``-shm``), the secret key file and the gateway's
  spool are created 0600 and a new data directory 0700, whatever the umask; ``esl serve``,
  ``esl demo``, ``esl gateway`` and ``esl simulate`` run with umask 077; a database an older
  release left 0644 is tightened at start, with one info line.
- Label keys are sealed in the database (AES-256-GCM, bound to their row): the clear key is
  nowhere in the files, and a sealed key copied onto another label's row does not open.
- A server started with another secret key (or without its key file) stops with one line.
- ``esl serve`` refuses to fall back on the simulator's (public) factory secret; the demo runs on it.
- No log line or error message holds a label key, a factory key, an authentication tag, the
  secret key or a token, through a pairing, a forged check-in and a forged frame.
- ``esl backup`` / ``esl restore`` carry the database and its key to a new data directory,
  whose server then delivers new prices to the same labels.

The upgrade of release 0.1.0's clear keys is tested in tests/test_upgrade.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from eslserver.auth import create_token
from eslserver.backup import BackupError, backup, restore
from eslserver.config import ConfigError, Settings, load_settings
from eslserver.db.sqlite import SqliteDatabase
from eslserver.gateway.events import Checkin
from eslserver.gateway.spool import JobSpool
from eslserver.keyvault import KeyMismatchError, KeyVault, SealError
from eslserver.server import Server
from firmware_proto.auth import Direction, FrameKey, seal, verify
from firmware_proto.errors import AuthError
from firmware_proto.frames import Checkin as CheckinFrame
from firmware_proto.frames import ControlCommand, address_bytes, parse_frame
from firmware_proto.gateway import GatewaySession
from simulator.label import factory_key
from tests.brokers import broker, mosquitto  # noqa: F401  (broker: a fixture)
from tests.pipeline_shop import Shop, shop, shop_settings
from tests.processes import GATEWAY_READY, SERVE_READY, SIMULATE_READY, Processes, esl_argv
from tests.test_cli_errors import ESL, _env, _errors
from tests.test_demo_story import demo_argv, finish, start_demo

MILK = {"sku": "100100", "name": "Mleko 3,2% 1 l", "price": "3.49", "seq": 1}
BREAD = {"sku": "100200", "name": "Chleb", "price": "4.99", "seq": 1}
OTHER_KEY = "ab" * 32


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The usual umask of a shell (022): what the server creates must be private anyway."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _server_settings(data: Path, **env: str) -> Settings:
    return load_settings(None, environ=env, overrides={"data_dir": data, "http_port": 0})


async def _start_once(data: Path, **env: str) -> None:
    """A server started once on `data` (no broker, no HTTP): the database, its key file."""
    async with Server(_server_settings(data, **env), mqtt=False, http=False, render_processes=False) as server:
        await create_token(server.db, "admin", "write-something")


# -- files: modes ----------------------------------------------------------------------------------

async def test_a_new_data_directory_and_its_files_are_private(tmp_path: Path, open_umask: None) -> None:
    data = tmp_path / "data"
    async with Server(_server_settings(data), mqtt=False, http=False, render_processes=False) as server:
        await create_token(server.db, "admin", "x")  # a write: the WAL and its index exist
        assert _mode(data) == 0o700
        for name in ("esl.db", "esl.db-wal", "esl.db-shm", "secret.key"):
            assert _mode(data / name) == 0o600, name
    spool_path = tmp_path / "gw" / "spool.db"
    async with JobSpool(spool_path) as spool:
        await spool.put(1, 1, b"envelope")
        assert _mode(spool_path.parent) == 0o700
        for suffix in ("", "-wal", "-shm"):
            assert _mode(Path(f"{spool_path}{suffix}")) == 0o600, suffix


async def test_a_database_left_readable_by_others_is_tightened_with_one_info_line(
        tmp_path: Path, open_umask: None, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    await _start_once(data)
    async with SqliteDatabase(data / "esl.db") as db:  # leave a WAL behind, as a killed release would
        await create_token(db, "pos", "y")
        for name in ("esl.db", "esl.db-wal", "esl.db-shm"):
            os.chmod(data / name, 0o644)
        os.chmod(data / "secret.key", 0o644)
    os.chmod(data / "esl.db", 0o644)
    caplog.set_level(logging.INFO, logger="eslserver.private_files")
    await _start_once(data)
    for name in ("esl.db", "esl.db-wal", "esl.db-shm", "secret.key"):
        if (data / name).exists():
            assert _mode(data / name) == 0o600, name
    lines = [r for r in caplog.records if r.name == "eslserver.private_files"]
    database_lines = [r for r in lines if "esl.db" in r.getMessage()]
    assert len(database_lines) == 1 and database_lines[0].levelno == logging.INFO, [r.getMessage() for r in lines]
    assert "0644" in database_lines[0].getMessage() and "0600" in database_lines[0].getMessage()
    caplog.clear()
    await _start_once(data)  # nothing left to tighten: nothing said
    assert not [r for r in caplog.records if r.name == "eslserver.private_files"]


def _umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError(f"/proc/{pid}/status has no Umask line")


def _not_private(root: Path) -> list[str]:
    return [f"{p} {_mode(p):04o}" for p in [root, *root.rglob("*")] if not p.is_symlink() and _mode(p) & 0o077]


async def test_serve_gateway_simulate_and_demo_run_with_umask_077(tmp_path: Path, open_umask: None) -> None:
    async with mosquitto() as url, Processes(tmp_path / "procs") as procs:
        sim = procs.spawn("simulate", esl_argv("simulate", "--labels", "1", "--listen", "127.0.0.1:0",
                                               "--state", str(tmp_path / "sim" / "flash.json")))
        ready = await sim.start(ready=SIMULATE_READY)
        assert ready is not None
        serve = procs.spawn("serve", esl_argv("serve", "--data", str(tmp_path / "data"), "--http-port", "0",
                                              "--broker", url))
        await serve.start(ready=SERVE_READY, timeout=60)
        gateway = procs.spawn("gateway", esl_argv("gateway", "--broker", url, "--radio", f"sim://{ready[1]}:{ready[2]}",
                                                  "--store", "demo", "--id", "gw1", "--data", str(tmp_path / "gw")))
        await gateway.start(ready=GATEWAY_READY)
        for child in (sim, serve, gateway):
            assert _umask_of(child.pid) == 0o077, child.name
        assert (tmp_path / "gw").exists() and (tmp_path / "data" / "secret.key").exists()
        # the demo alone runs on the simulator's factory secret: no ESL_FACTORY_SECRET given
        procs.env.pop("ESL_FACTORY_SECRET")
        demo = procs.spawn("demo", demo_argv(tmp_path / "demo", "--labels", "2", "--no-feed", "--duration", "4"))
        await start_demo(demo)
        assert _umask_of(demo.pid) == 0o077
        assert await finish(demo) == 0, demo.tail()
        for child in (gateway, serve, sim):
            assert await child.stop() == 0, child.tail()
    for root in ("data", "gw", "sim", "demo"):
        assert not _not_private(tmp_path / root), _not_private(tmp_path / root)


# -- label keys, sealed ----------------------------------------------------------------------------

async def _paired_shop_keys(s: Shop) -> dict[str, bytes]:
    """Every label of the shop paired and showing its product; their clear keys (the labels')."""
    await s.seed([MILK, BREAD])
    await s.bind(dict(zip(s.macs, ("100100", "100200"))))
    await s.converged()
    keys = {mac: s.store.labels[mac].flash.label_key for mac in s.macs}
    assert all(key is not None for key in keys.values())
    return keys  # type: ignore[return-value]


def _raw(data: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data.glob("esl.db*")))


def _stored_keys(db: Path) -> tuple[dict[str, bytes], list[bytes]]:
    import sqlite3
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        labels = {r[0]: bytes(r[1]) for r in conn.execute("SELECT mac, label_key FROM labels "
                                                          "WHERE label_key IS NOT NULL")}
        pairs = [bytes(r[0]) for r in conn.execute("SELECT command FROM jobs WHERE kind = 'pair'")]
    return labels, pairs


async def test_label_keys_are_sealed_and_the_clear_key_is_nowhere_in_the_files(tmp_path: Path, broker: str) -> None:
    async with shop(tmp_path, broker, labels=2) as s:
        keys = await _paired_shop_keys(s)
        stored, pairings = _stored_keys(s.settings.database_path)
        assert set(stored) == set(keys) and len(pairings) == 2
        for mac, key in keys.items():
            assert len(stored[mac]) == 1 + 12 + 16 + 16 and key not in stored[mac]
            assert s.server.vault.open_label_key(s.settings.store, mac, stored[mac]) == key
        raw = _raw(s.settings.data_dir)
        for key in keys.values():
            assert key not in raw and key.hex().encode() not in raw


async def test_a_sealed_key_copied_onto_another_label_does_not_open(tmp_path: Path, broker: str) -> None:
    async with shop(tmp_path, broker, labels=2) as s:
        await _paired_shop_keys(s)
        milk, bread = s.macs
        stored, _ = _stored_keys(s.settings.database_path)
        shown = s.store.labels[bread].displayed_hash
        async with s.server.db.transaction() as conn:  # an attacker with write access to the file
            await conn.execute("UPDATE labels SET label_key = ? WHERE mac = ?", (stored[milk], bread))
        await s.publish_prices([{"sku": "100200", "price": "5.49", "seq": 2}])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (await s.label(bread))["state"] != "failed":
            assert loop.time() < deadline, await s.label(bread)
            await asyncio.sleep(0.05)
        jobs = await s.server.db.read("SELECT error FROM jobs WHERE mac = ? AND state = 'failed'", (bread,))
        assert any("does not open" in (j["error"] or "") for j in jobs), [j["error"] for j in jobs]
        assert s.store.labels[bread].displayed_hash == shown  # nothing reached the label under milk's key
        await s.publish_prices([{"sku": "100100", "price": "2.99", "seq": 2}])
        before = (await s.label(milk))["expected_hash"]
        while (await s.label(milk))["expected_hash"] == before:
            await asyncio.sleep(0.05)
        await s.converged([milk])  # the label whose key it is goes on as before


async def test_a_sealed_value_opens_only_for_its_own_row_and_key(tmp_path: Path) -> None:
    settings = _server_settings(tmp_path / "data")
    async with SqliteDatabase(settings.database_path) as db:
        vault = KeyVault(settings)
        await vault.load(db)
        key = bytes(range(16))
        sealed = vault.seal_label_key("demo", "AA:BB:CC:00:00:01", key)
        assert vault.open_label_key("demo", "AA:BB:CC:00:00:01", sealed) == key
        assert vault.seal_label_key("demo", "AA:BB:CC:00:00:01", key) != sealed  # a fresh nonce each time
        flipped = sealed[:-1] + bytes([sealed[-1] ^ 1])
        for store, mac, value in (("demo", "AA:BB:CC:00:00:02", sealed), ("other", "AA:BB:CC:00:00:01", sealed),
                                  ("demo", "AA:BB:CC:00:00:01", flipped), ("demo", "AA:BB:CC:00:00:01", sealed[:20]),
                                  ("demo", "AA:BB:CC:00:00:01", key)):
            with pytest.raises(SealError) as err:
                vault.open_label_key(store, mac, value)
            assert key.hex() not in str(err.value) and sealed.hex() not in str(err.value)
    elsewhere = _server_settings(tmp_path / "elsewhere", ESL_SECRET_KEY=OTHER_KEY)
    async with SqliteDatabase(elsewhere.database_path) as db:
        other = KeyVault(elsewhere)
        await other.load(db)
        with pytest.raises(SealError):  # the right row, another server's key
            other.open_label_key("demo", "AA:BB:CC:00:00:01", sealed)


# -- the secret key ----------------------------------------------------------------------------

def _serve(tmp_path: Path, data: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ESL, "serve", "--http-port", "0", "--data", str(data), "--broker", "mqtt://127.0.0.1:1"],
                          cwd=tmp_path, env=_env(**env), capture_output=True, text=True, timeout=90)


@pytest.mark.parametrize("case", ["another key in ESL_SECRET_KEY", "key file gone", "key file replaced"])
async def test_a_server_with_another_secret_key_refuses_to_start_in_one_line(tmp_path: Path, case: str) -> None:
    data = tmp_path / "data"
    await _start_once(data)
    key_file = data / "secret.key"
    env: dict[str, str] = {}
    if case == "another key in ESL_SECRET_KEY":
        env["ESL_SECRET_KEY"], where = OTHER_KEY, "key from ESL_SECRET_KEY"
    elif case == "key file gone":
        key_file.unlink()
        where = f"secret key file {key_file} does not exist and ESL_SECRET_KEY is not set"
    else:
        key_file.write_text(OTHER_KEY + "\n")
        where = f"key from secret key file {key_file}"
    before = (data / "esl.db").read_bytes()
    done = _serve(tmp_path, data, **env)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert _errors(done.stderr) == [
        f"esl serve: the secret key does not match the one this database was written with ({where}); "
        "set ESL_SECRET_KEY or secret_key_file to the original"]
    assert OTHER_KEY not in done.stderr + done.stdout
    assert (data / "esl.db").read_bytes() == before  # nothing written under the wrong key
    if case == "key file gone":
        assert not key_file.exists()  # and no new key made for a database written with another


async def test_the_same_key_given_in_the_environment_opens_the_database(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _start_once(data)
    secret = (data / "secret.key").read_text().strip()
    (data / "secret.key").unlink()
    settings = _server_settings(data, ESL_SECRET_KEY=secret)
    async with Server(settings, mqtt=False, http=False, render_processes=False) as server:
        assert server.vault.source == "ESL_SECRET_KEY"
    assert not (data / "secret.key").exists()  # the environment's key is not written anywhere
    with pytest.raises(KeyMismatchError):
        async with Server(_server_settings(data, ESL_SECRET_KEY=OTHER_KEY), mqtt=False, http=False,
                          render_processes=False):
            pass


async def test_secret_key_file_keeps_the_key_outside_the_data_directory(tmp_path: Path, open_umask: None) -> None:
    data, key_file = tmp_path / "data", tmp_path / "secrets" / "esl.key"
    await _start_once(data, ESL_SECRET_KEY_FILE=str(key_file))
    assert _mode(key_file) == 0o600 and _mode(key_file.parent) == 0o700
    assert not (data / "secret.key").exists()
    await _start_once(data, ESL_SECRET_KEY_FILE=str(key_file))  # read back, and it matches
    with pytest.raises(KeyMismatchError):  # the data directory alone is not enough
        await _start_once(data)


def test_secret_settings_are_checked_without_being_quoted(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, environ={"ESL_SECRET_KEY": "0123456789abcdefXYZ"})
    assert "ESL_SECRET_KEY" in str(err.value) and "0123456789abcdef" not in str(err.value)
    toml = tmp_path / "esl.toml"
    toml.write_text(f'secret_key = "{OTHER_KEY}"\n')
    with pytest.raises(ConfigError, match="secret_key is read only from ESL_SECRET_KEY") as err:
        load_settings(toml, environ={})
    assert OTHER_KEY not in str(err.value)
    settings = load_settings(None, environ={"ESL_SECRET_KEY": OTHER_KEY, "ESL_FACTORY_SECRET": "vendor-s3cret",
                                            "ESL_MQTT_PASSWORD": "mqtt-s3cret"})
    for secret in (OTHER_KEY, "vendor-s3cret", "mqtt-s3cret"):
        assert secret not in repr(settings)


# -- the factory secret ----------------------------------------------------------------------------

def test_serve_refuses_to_fall_back_on_the_simulators_factory_secret(tmp_path: Path) -> None:
    env = _env()
    del env["ESL_FACTORY_SECRET"]
    done = subprocess.run([*ESL, "serve", "--http-port", "0", "--data", str(tmp_path / "data")], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert _errors(done.stderr) == [
        "esl serve: factory_secret is not set, and the simulator's is public (anyone could pair the labels); set "
        "it to your labels' vendor secret with factory_secret in esl.toml or ESL_FACTORY_SECRET (only esl demo "
        "runs on the simulator's)"]
    assert not (tmp_path / "data").exists()  # refused before anything was created


# -- no key, tag or token in a log line or message -----------------------------------------------------

def _true_tag(frame_bytes: bytes, key: bytes, mac: str, direction: Direction) -> bytes:
    """The tag the frame would carry if its sender held `key`: what an error must never show."""
    frame = parse_frame(frame_bytes)
    assert frame.auth is not None
    genuine = parse_frame(seal(frame, FrameKey(key), address_bytes(mac), direction, frame.auth.counter))
    assert genuine.auth is not None
    return genuine.auth.tag


async def test_no_log_line_or_message_holds_a_key_tag_or_token(tmp_path: Path, broker: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with shop(tmp_path, broker, labels=1) as s:
        await s.seed([MILK])
        mac = s.macs[0]
        await s.bind({mac: MILK["sku"]})  # a pairing, then an image
        await s.converged()
        label = s.store.labels[mac]
        key = label.flash.label_key
        assert key is not None
        secrets = [key, factory_key(0, mac), bytes.fromhex(s.server.vault.secret_text())]
        messages: list[str] = []

        # a forged check-in: the genuine frame's tag on another displayed hash
        genuine = parse_frame(label.session.checkin())
        assert isinstance(genuine, CheckinFrame)
        forged = replace(genuine, displayed_hash=bytes(len(genuine.displayed_hash))).to_bytes()
        secrets.append(_true_tag(forged, key, mac, Direction.FROM_LABEL))
        await s.server.dispatcher.on_event("gw1", Checkin(mac=mac, rssi=-50, frame=forged).to_json())
        with pytest.raises(AuthError) as err:
            verify(parse_frame(forged), FrameKey(key), address_bytes(mac), Direction.FROM_LABEL)
        assert "authentication tag does not match" in str(err.value)
        messages.append(str(err.value))

        # a forged command to the label: another LED pattern under a genuine tag
        command = parse_frame(GatewaySession(mac, key, tx_counter=label.flash.rx.highest + 100).command(
            "led_control", led_index=0, color_brightness=1, flash_pattern=1, off_period=1, on_period=1, repeat=1))
        assert isinstance(command, ControlCommand)
        tampered = replace(command, params=(0, 0, 0xFF, 0xFFFFFFFFFF, 1, 1, 0xFFFF)).to_bytes()
        secrets.append(_true_tag(tampered, key, mac, Direction.TO_LABEL))
        label.session.receive(tampered)  # refused (what the label may resend is its last job's final word)
        messages += [str(getattr(e, "reason", "")) for e in label.session.pop_events()]
        assert any("tag" in m for m in messages[1:]), messages

        # a token sent without "Bearer ", and one mistyped
        token = await create_token(s.server.db, "admin", "careless")
        async with aiohttp.ClientSession(f"http://127.0.0.1:{s.server.http_port}") as http:
            for header in (token, f"Bearer {token}x", f"Token {token}"):
                async with http.get("/api/v1/me", headers={"Authorization": header}) as response:
                    assert response.status == 401
                    messages.append(await response.text())
        secrets.append(token.rsplit("_", 1)[1].encode())
        jobs = await s.server.db.read("SELECT error FROM jobs WHERE error IS NOT NULL")
        messages += [j["error"] for j in jobs]

    logged = [r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
              for r in caplog.records]
    assert any("pair" in line or "label" in line for line in logged)  # the capture saw the server at work
    assert any("failed authentication" in line for line in logged)
    for secret in secrets:
        for text in (secret.hex(), secret.hex().upper(), secret.decode("latin-1")):
            if len(text) < 8:
                continue
            found = [line for line in logged + messages if text in line]
            assert not found, f"{secret.hex()[:6]}… appears in: {found[:3]}"


# -- backup and restore ----------------------------------------------------------------------------

async def test_backup_and_restore_carry_the_labels_to_a_new_data_directory(tmp_path: Path, broker: str) -> None:
    flash = tmp_path / "flash.json"  # the simulated labels keep their keys across both servers
    target = tmp_path / "backup.tar"
    async with shop(tmp_path / "first", broker, labels=2, sim_state=flash) as s:
        keys = await _paired_shop_keys(s)
        info = await backup(s.settings, target)  # while the server runs
        assert info.schema_version >= 5 and info.database_bytes > 0
        milk = s.macs[0]
        assert s.server.signing_key is not None
        trusted = s.server.signing_key.public  # what every gateway of the store was given
    assert _mode(target) == 0o600
    with tarfile.open(target) as tar:
        assert sorted(tar.getnames()) == ["MANIFEST.json", "esl.db", "secret.key", "signing.key"]
        manifest = json.loads(tar.extractfile("MANIFEST.json").read())  # type: ignore[union-attr]
        database = tar.extractfile("esl.db").read()  # type: ignore[union-attr]
    assert manifest["format"] == "eslserver-backup" and manifest["version"] == 2
    assert all(key not in database for key in keys.values())

    data = tmp_path / "second" / "data"
    done = subprocess.run([*ESL, "restore", str(target), "--data", str(data)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    assert _mode(data) == 0o700 and _mode(data / "esl.db") == 0o600 and _mode(data / "secret.key") == 0o600
    assert _mode(data / "signing.key") == 0o600
    async with shop(tmp_path / "second", broker, labels=2, sim_state=flash) as s:
        assert sorted(s.macs) == sorted(keys)
        assert s.server.signing_key is not None
        assert s.server.signing_key.public == trusted  # the gateways need no new server key
        before = (await s.label(milk))["expected_hash"]
        await s.publish_prices([{"sku": "100100", "price": "2.79", "seq": 5}])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (await s.label(milk))["expected_hash"] == before:
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        states = await s.converged([milk], timeout=60)  # shown, and reported under the restored key
        assert states[milk]["displayed_hash"] == s.store.labels[milk].displayed_hash.hex()


async def test_backup_and_restore_refuse_what_they_must(tmp_path: Path) -> None:
    data = tmp_path / "data"
    await _start_once(data)
    settings = _server_settings(data)
    target = tmp_path / "b.tar"
    await backup(settings, target)
    with pytest.raises(BackupError, match="already exists"):
        await backup(settings, target)  # never overwritten
    with pytest.raises(BackupError, match="no eslserver database"):
        await backup(_server_settings(tmp_path / "nothing"), tmp_path / "c.tar")

    with pytest.raises(BackupError, match="is not empty .*--force"):
        await restore(settings, target)
    with pytest.raises(BackupError, match="ESL_SECRET_KEY is set to another key"):
        await restore(_server_settings(tmp_path / "fresh", ESL_SECRET_KEY=OTHER_KEY), target)
    assert not (tmp_path / "fresh" / "esl.db").exists()

    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        for name, body in (("MANIFEST.json", b"{}"), ("../escape", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    with pytest.raises(BackupError, match="not an eslserver backup"):
        await restore(_server_settings(tmp_path / "fresh"), evil)
    assert not (tmp_path / "escape").exists() and not (tmp_path / "fresh" / "esl.db").exists()
    (tmp_path / "garbage.tar").write_bytes(os.urandom(3000))
    with pytest.raises(BackupError, match="not an eslserver backup"):
        await restore(_server_settings(tmp_path / "fresh"), tmp_path / "garbage.tar")

    # --force over a data directory whose database is another one (a new install started once)
    other = tmp_path / "other"
    await _start_once(other)
    info = await restore(_server_settings(other), target, force=True)
    assert info.schema_version >= 5
    assert (other / "secret.key").read_text() == (data / "secret.key").read_text()
    await _start_once(other)  # the restored database opens under the restored key

    # the signing key the store's gateways trust travels with the backup, and comes back with --force
    (data / "signing.key").write_text("ab" * 32 + "\n")
    signed = tmp_path / "signed.tar"
    await backup(settings, signed)
    (other / "signing.key").write_text("cd" * 32 + "\n")
    await restore(_server_settings(other), signed, force=True)
    assert (other / "signing.key").read_text() == "ab" * 32 + "\n" and _mode(other / "signing.key") == 0o600
    with tarfile.open(signed) as tar:
        assert "signing.key" in tar.getnames()


async def test_the_broker_password_is_never_printed_or_logged(tmp_path: Path) -> None:
    """``--broker mqtt://user:password@host`` works, and neither the start line nor the log shows the password."""
    async with mosquitto() as url, Processes(tmp_path / "procs") as procs:
        with_password = url.replace("mqtt://", "mqtt://eslserver:n0t-in-any-log@", 1)
        serve = procs.spawn("serve", esl_argv("serve", "--data", str(tmp_path / "data"), "--http-port", "0",
                                              "--broker", with_password, "--verbose"))
        await serve.start(ready=SERVE_READY, timeout=60)
        assert await serve.stop() == 0, serve.tail()
        output = "\n".join(line for line in serve.log.splitlines() if not line.startswith("=== "))  # ours: argv
        assert "eslserver:***@" in output, serve.tail()
        assert "n0t-in-any-log" not in output
