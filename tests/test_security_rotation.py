"""The server's signing key can be rotated, and gateways follow (issue 13, item 6).

After `rotate_signing_key` the server signs with a new key B and every envelope carries the
previous key A's endorsement of B. A gateway configured with A checks the endorsement, keeps B
in its data directory and trusts B alone from then on (also after a restart), so a stolen A is
useless once it followed. An endorsement by any other key, or changed in one byte, is refused
and leaves the label untouched. One step only: a gateway on A does not follow B -> C.
"""

from __future__ import annotations

import json
import logging
import stat
import zlib
from pathlib import Path

import pytest

from eslserver.cli.gateway_cmds import trusted_line
from eslserver.config import load_settings
from eslserver.gateway.events import Ack, EventError, Nack, Status, parse_event
from eslserver.gateway.server_key import ServerKeyFileError, load_trusted_key, save_followed_key
from eslserver.server import Server
from eslserver.signing import (
    SigningKeyError,
    load_signer,
    load_signing_key,
    load_signing_keys,
    previous_key_path,
    rotate_signing_key,
    signing_key_path,
)
from eslserver.store import gateways as gateway_rows
from firmware_proto.envelope import ENDORSED_VERSION, envelope_endorsement
from firmware_proto.trust import SigningKey
from simulator.label import factory_key
from tests.brokers import mosquitto
from tests.job_issuer import Issuer
from tests.pipeline_shop import shop
from tests.test_security_envelopes import GW, KEY, MAC, STORE, Rig, paired_and_showing, rig
from tests.test_security_jobkeys import MILK, until


def picture_job(r: Rig, job_id: int, n: int, signer: SigningKey | None = None) -> bytes:
    """An image job for the rig's label, signed by `signer` (default: the issuer's own)."""
    from tests.test_gateway import picture, update_for

    job = r.issuer.image(update_for(picture(n)), job_id=job_id, mac=MAC, label_key=KEY)
    return job.to_bytes(r.issuer.signer if signer is None else signer)


async def refused(r: Rig, data: bytes, job_id: int, count: int = 1) -> Nack:
    truth = r.shelf_truth()
    await r.send(data)
    nack = await r.result(job_id, count)
    assert isinstance(nack, Nack) and (nack.code, nack.retry) == ("bad_signature", False), nack
    assert r.shelf_truth() == truth  # nothing reached the label
    return nack


async def test_a_gateway_follows_the_endorsed_key_and_then_trusts_it_alone_also_after_a_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    path = tmp_path / f"gateway-{STORE}-{GW}.server.key.pub"
    with caplog.at_level(logging.INFO, logger="eslserver.gateway.bridge"):
        async with rig(tmp_path, signer=old) as r:
            await paired_and_showing(r)  # signed by the old key A
            assert r.gateway.server_key == old.public and not path.exists()
            r.issuer.signer = new.endorsed_by(old)  # the server rotated: B, endorsed by A
            await r.send(picture_job(r, 40, 4))
            followed = await r.result(40)
            assert isinstance(followed, Ack), followed
            r.issuer.heard(followed)
            assert r.gateway.server_key == new.public
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            lines = [rec.getMessage() for rec in caplog.records if "rotated its key" in rec.getMessage()]
            assert lines == [f"the server rotated its key: now trusting server key {new.public.fingerprint}, "
                             f"endorsed by {old.public.fingerprint} (no longer trusted)"]
            # the status event says at once which key the gateway trusts now
            await until("a status naming the new key", lambda: any(
                isinstance(e, Status) and e.server_key == new.public.fingerprint for e in r.events))
            # a stolen old key is useless now: even a fresh, well-formed job signed by it
            await refused(r, picture_job(r, 41, 5, signer=old), 41)
            # the new key alone (no endorsement any more, once the server deleted the previous key)
            await r.send(picture_job(r, 42, 6, signer=new))
            assert isinstance(await r.result(42), Ack)
    # restarted with the same configuration (server_public_key still A): trusts B, refuses A
    async with rig(tmp_path, signer=old) as r:
        assert r.gateway.server_key == new.public
        pair = r.issuer.pair(job_id=100, mac=MAC, factory_key=factory_key(4, MAC), new_key=KEY)
        await refused(r, pair.to_bytes(old), 100)
        await r.send(pair.to_bytes(new))
        assert isinstance(await r.result(100, count=2), Ack) and r.label.paired


async def test_an_endorsement_by_a_key_the_gateway_does_not_trust_is_refused(tmp_path: Path) -> None:
    trusted, other, third = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    async with rig(tmp_path, signer=trusted) as r:
        await paired_and_showing(r)
        # C endorsed by B while the gateway trusts A: one step only, and only from the trusted key
        nack = await refused(r, picture_job(r, 50, 7, signer=third.endorsed_by(other)), 50)
        assert other.public.fingerprint in nack.reason and trusted.public.fingerprint in nack.reason
        # an attacker's own key, "endorsed" by itself under another name is no endorsement either
        await refused(r, picture_job(r, 51, 7, signer=third.endorsed_by(SigningKey.generate())), 51)
        assert r.gateway.server_key == trusted.public
        assert not (tmp_path / f"gateway-{STORE}-{GW}.server.key.pub").exists()
        assert r.gateway.refused == {"bad_signature": 2}


async def test_an_endorsement_changed_in_one_byte_is_refused(tmp_path: Path) -> None:
    old, new = SigningKey.generate(), SigningKey.generate()
    async with rig(tmp_path, signer=old) as r:
        await paired_and_showing(r)
        endorsing = new.endorsed_by(old)
        for job_id, offset in ((60, 5), (61, 32 + 7), (62, 64 + 20), (63, 127)):  # endorser, new key, signature
            good = bytearray(picture_job(r, job_id, 8, signer=endorsing))
            assert good[2] == ENDORSED_VERSION
            start = len(good) - 4 - 64 - 128
            good[start + offset] ^= 0x01
            body = bytes(good[:-4])
            await refused(r, body + zlib.crc32(body).to_bytes(4, "little"), job_id)
        assert r.gateway.server_key == old.public
        # and the untouched endorsement still works afterwards
        await r.send(picture_job(r, 64, 8, signer=endorsing))
        assert isinstance(await r.result(64), Ack) and r.gateway.server_key == new.public


def test_the_followed_key_overrides_server_public_key_only_while_that_setting_is_unchanged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, b, c = (SigningKey.generate().public for _ in range(3))
    path = tmp_path / "gw.server.key.pub"
    assert load_trusted_key(path, a) == a and load_trusted_key(path, None) is None
    save_followed_key(path, a, b)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_trusted_key(path, a) == b
    save_followed_key(path, a, c)  # a second rotation later, B -> C, followed from B
    assert load_trusted_key(path, a) == c
    with caplog.at_level(logging.WARNING, logger="eslserver.gateway.server_key"):
        assert load_trusted_key(path, b) == b  # the operator set another key by hand: obeyed
    assert any("trusting the configured key" in rec.getMessage() for rec in caplog.records)
    path.write_text(f"trusts {c.hex()}\n")  # a careless edit: refused, naming the file, not guessed
    with pytest.raises(ServerKeyFileError, match="expected the lines 'configured"):
        load_trusted_key(path, a)
    path.write_text(f"configured {a.hex()}\ntrusts {'zz' * 32}\n")
    with pytest.raises(ServerKeyFileError, match=str(path)):
        load_trusted_key(path, a)


def test_esl_gateway_says_which_server_key_it_trusts() -> None:
    a, b = SigningKey.generate().public, SigningKey.generate().public
    assert trusted_line(a, a) == f"server key: {a.fingerprint} (server_public_key)"
    assert trusted_line(b, a) == (f"server key: {b.fingerprint} (followed the server's key rotation from the "
                                  f"configured {a.fingerprint})")
    assert "every job will be refused" in trusted_line(None, None)
    assert len(a.fingerprint) == 16 and a.hex().startswith(a.fingerprint)


def test_a_status_event_names_a_fingerprint_or_nothing() -> None:
    base = {"type": "status", "gateway": GW, "at": "2026-01-01T00:00:00Z", "in_flight": 0, "spooled": 0,
            "labels_heard": 0, "protocol": 2}
    assert parse_event(json.dumps({**base, "server_key": "0123456789abcdef"})).server_key == "0123456789abcdef"  # type: ignore[union-attr]
    assert parse_event(json.dumps(base)).server_key is None  # type: ignore[union-attr]
    for bad in ("0123", "0123456789ABCDEF", "x" * 16, 5, "0" * 64):
        with pytest.raises(EventError, match="server_key: expected 16 lowercase hex digits"):
            parse_event(json.dumps({**base, "server_key": bad}))


def test_rotation_keeps_the_previous_key_and_refuses_to_strand_gateways(tmp_path: Path) -> None:
    settings = load_settings(environ={}, overrides={"data_dir": tmp_path / "data"})
    with pytest.raises(SigningKeyError, match="there is none"):
        rotate_signing_key(settings)  # nothing to rotate: no gateway was given a key
    first = load_signing_key(settings)
    old, new = rotate_signing_key(settings)
    assert old.public == first.public and new.public != old.public
    for path in (signing_key_path(settings), previous_key_path(settings)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert new.public.hex() not in path.read_text() and old.public.hex() not in path.read_text()
    current, previous = load_signing_keys(settings)
    assert (current.public, previous and previous.public) == (new.public, old.public)
    with pytest.raises(SigningKeyError, match=f"still kept.*{old.public.fingerprint}") as info:
        rotate_signing_key(settings)  # a second rotation would strand the gateways still on the first key
    assert old.private_bytes().hex() not in str(info.value)
    assert load_signing_keys(settings)[0].public == new.public  # unchanged by the refusal
    newer = rotate_signing_key(settings, force=True)[1]
    assert load_signer(settings).endorsement is not None
    assert load_signer(settings).endorsement.endorser == new.public  # type: ignore[union-attr]
    previous_key_path(settings).unlink()  # every gateway follows: the endorsements end
    signer = load_signer(settings)
    assert signer.public == newer.public and signer.endorsement is None


async def test_a_server_restarted_after_rotation_signs_with_the_new_key_and_endorses_it(tmp_path: Path) -> None:
    async with mosquitto() as url, shop(tmp_path, url, labels=1) as s:
        await s.seed([MILK])
        await s.bind({s.macs[0]: MILK["sku"]})
        await s.converged()
        old = s.server.signing_key
        assert old is not None and old.endorsement is None
    old_new = rotate_signing_key(s.settings)
    assert old_new[0].public == old.public
    settings = s.settings
    async with mosquitto() as url:
        restarted = load_settings(environ={}, overrides={"data_dir": settings.data_dir, "broker_url": url,
                                                          "http_port": 0})
        async with Server(restarted, http=False, render_processes=False) as server:
            key = server.signing_key
            assert key is not None and key.public == old_new[1].public
            assert key.endorsement is not None and key.endorsement.endorser == old.public
            assert server.dispatcher.signer is key
            issuer = Issuer(store=STORE, gateway=GW, gateway_key=bytes(32), signer=key)
            data = issuer.sign(issuer.pair(job_id=1, mac=MAC, factory_key=bytes(16), new_key=KEY))
            assert data[2] == ENDORSED_VERSION and envelope_endorsement(data) == key.endorsement


async def test_a_rotation_between_two_price_changes_reaches_the_label(tmp_path: Path) -> None:
    """The real pipeline: the server's key rotates between two price changes; the gateway,
    configured with the old key, follows at the second and both reach the label."""
    async with mosquitto() as url, shop(tmp_path, url, labels=1) as s:
        await s.seed([MILK])
        mac = s.macs[0]
        await s.bind({mac: MILK["sku"]})
        first = (await s.converged())[mac]["expected_hash"]
        old = s.server.signing_key
        assert old is not None and s.gateway.server_key == old.public
        new = rotate_signing_key(s.settings)[1]
        # what a restart does (`Server` loads `load_signer` at start), without losing the shop
        s.server.signing_key = s.server.dispatcher.signer = load_signer(s.settings)
        await s.publish_prices({"sku": MILK["sku"], "price": "2.99", "seq": 2})

        async def repriced() -> bool:
            return (await s.label(mac))["expected_hash"] != first

        await until("the second price planned", repriced)
        second = (await s.converged())[mac]["expected_hash"]
        assert second != first and s.store.labels[mac].displayed_hash.hex() == second
        assert s.gateway.server_key == new.public

        async def listed() -> bool:
            rows = {r["id"]: r for r in await gateway_rows.listing(s.server.db, s.settings.store)}
            return json.loads(rows["gw1"]["info"]).get("server_key") == new.public.fingerprint

        await until("the gateways listing naming the new key", listed)


def test_esl_trust_rotate_server_key_rotates_once_and_then_asks_for_force(tmp_path: Path) -> None:
    """The operator's command: prints the new public key, keeps the previous key (0600) for the
    gateways to follow, and refuses a second rotation that would strand them unless forced."""
    from typer.testing import CliRunner

    from eslserver.cli import app

    data = str(tmp_path / "data")
    runner = CliRunner()
    first = runner.invoke(app, ["trust", "server-key", "--data", data])
    assert first.exit_code == 0
    old = first.stdout.strip()
    rotated = runner.invoke(app, ["trust", "rotate-server-key", "--data", data])
    assert rotated.exit_code == 0, rotated.stderr
    new = rotated.stdout.strip()
    assert len(new) == 64 and new != old and old[:16] in rotated.stderr and new[:16] in rotated.stderr
    assert runner.invoke(app, ["trust", "server-key", "--data", data]).stdout.strip() == new
    previous = tmp_path / "data" / "signing.key.previous"
    assert previous.exists() and previous.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(app, ["trust", "rotate-server-key", "--data", data])
    assert again.exit_code == 1 and "still kept" in again.stderr
    forced = runner.invoke(app, ["trust", "rotate-server-key", "--force", "--data", data])
    assert forced.exit_code == 0 and forced.stdout.strip() not in (old, new)
