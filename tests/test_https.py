"""HTTPS for the API and the web UI, and a warning when tokens would cross the network in clear.

Bearer tokens and prices travel in every request: served beyond loopback without TLS, anyone on
the store network reads them. With a certificate and key the server speaks HTTPS only (a plain
HTTP request on that port gets no answer of ours); without them, listening on anything but
loopback logs a warning at start. A certificate that does not match its key stops the start
with one line naming the setting, and never prints the key.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from eslserver.config import ConfigError, load_settings
from eslserver.server import Server
from eslserver.startup import StartupError, is_loopback


def _self_signed(directory: Path, name: str = "server") -> tuple[Path, Path, bytes]:
    """A certificate for 127.0.0.1 and its key as PEM files; also the key's PEM bytes."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eslserver test")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    key_path.write_bytes(key_pem)
    return cert_path, key_path, key_pem


def _settings(tmp_path: Path, **overrides: object) -> object:
    return load_settings(environ={}, overrides={"data_dir": tmp_path / "data", "http_port": 0, **overrides})


async def test_with_a_certificate_the_api_is_served_over_https_only(tmp_path: Path) -> None:
    cert, key, _ = _self_signed(tmp_path)
    settings = _settings(tmp_path, http_tls_cert=cert, http_tls_key=key)
    async with Server(settings, mqtt=False, render_processes=False) as server:
        assert server.http_scheme == "https"
        trust = ssl.create_default_context(cafile=str(cert))
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{server.http_port}/healthz", ssl=trust) as reply:
                assert reply.status == 200
                assert (await reply.json())["status"] == "ok"
            # the same port does not answer plain HTTP: nothing crosses it in clear
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{server.http_port}/healthz",
                                       timeout=aiohttp.ClientTimeout(total=5)) as reply:
                    await reply.read()
            # a client that checks certificates refuses one it was not told to trust
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with session.get(f"https://127.0.0.1:{server.http_port}/healthz") as reply:
                    await reply.read()


def test_a_certificate_without_its_key_is_refused_naming_both(tmp_path: Path) -> None:
    cert, _, _ = _self_signed(tmp_path)
    with pytest.raises(ConfigError, match="http_tls_cert is set but http_tls_key is not"):
        _settings(tmp_path, http_tls_cert=cert)


async def test_a_key_that_does_not_match_stops_the_start_without_showing_the_key(tmp_path: Path) -> None:
    cert, _, _ = _self_signed(tmp_path, "one")
    _, other_key, other_pem = _self_signed(tmp_path, "two")
    settings = _settings(tmp_path, http_tls_cert=cert, http_tls_key=other_key)
    with pytest.raises(StartupError) as caught:
        async with Server(settings, mqtt=False, render_processes=False):
            pass
    assert caught.value.setting == "http_tls_cert"
    message = str(caught.value)
    assert message.startswith("HTTPS:") and str(cert) in message
    body = b"".join(other_pem.splitlines()[1:-1]).decode()
    assert body[:40] not in message


async def test_a_missing_certificate_file_names_the_file(tmp_path: Path) -> None:
    cert, key, _ = _self_signed(tmp_path)
    settings = _settings(tmp_path, http_tls_cert=tmp_path / "absent.crt", http_tls_key=key)
    with pytest.raises(StartupError, match="absent.crt"):
        async with Server(settings, mqtt=False, render_processes=False):
            pass
    assert cert.exists()


async def test_listening_beyond_loopback_without_tls_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="eslserver.server")
    async with Server(_settings(tmp_path, http_host="127.0.0.1"), mqtt=False, render_processes=False):
        pass
    assert not [r for r in caplog.records if "without TLS" in r.getMessage()]
    async with Server(_settings(tmp_path, http_host="0.0.0.0"), mqtt=False, render_processes=False):
        pass
    warnings = [r.getMessage() for r in caplog.records if "without TLS" in r.getMessage()]
    assert len(warnings) == 1 and "0.0.0.0" in warnings[0] and "http_tls_cert" in warnings[0]


@pytest.mark.parametrize(("host", "loopback"), [("127.0.0.1", True), ("127.8.0.1", True), ("::1", True),
                                                 ("localhost", True), ("0.0.0.0", False), ("::", False),
                                                 ("192.168.1.10", False), ("shop.example", False)])
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
