"""Real MQTT brokers for tests: Mosquitto as a child process, amqtt embedded in the test's loop.

API (everything yields a URL string ``"mqtt://127.0.0.1:PORT"``):

    async with mosquitto() as url: ...            # skips the test if mosquitto is not installed
    async with mosquitto(port=p, password_file=f) as url: ...   # fixed port / password file
    async with mosquitto(password_file=f, acl_file=a) as url: ...  # and access rules (esl broker-config's)
    async with embedded_broker() as url: ...      # eslserver.broker.EmbeddedBroker, amqtt path
    async with embedded_broker(implementation="mosquitto") as url: ...   # its Mosquitto path

    broker = MosquittoBroker(port=p); await broker.start(); ...; broker.kill() / await broker.stop()
                                                 # when a test must kill -9 or restart the broker
    MosquittoBroker(persistence=True, autosave_interval_s=1)  # sessions, queued and retained
                                                 # messages saved every second, restored on start

    from tests.brokers import broker_url          # re-export in a test module: a fixture
    async def test_x(broker_url: str): ...        # parametrised over ["mosquitto", "amqtt"]
    from tests.brokers import broker              # one broker: Mosquitto if installed, else amqtt

    async with TcpProxy(port) as proxy:           # a cuttable network between client and broker
        proxy.url; proxy.cut()                    # abort every connection (RST both ways)
        await proxy.refuse(); await proxy.accept()  # stop / resume listening (connection refused)

    tls = make_tls_files(tmp_path)                # a CA, a server cert (127.0.0.1) and a client cert
    async with mosquitto(tls=tls) as url: ...     # url is "mqtts://127.0.0.1:PORT"
    async with mosquitto(tls=tls, require_client_cert=True) as url: ...

    free_port() -> int; MOSQUITTO, MOSQUITTO_PASSWD: paths or None when not installed

A Mosquitto broker keeps sessions in memory only (persistence off) unless asked: a persistent
session survives a *client* restart, not a broker restart. With ``persistence=True`` it saves
them (and queued and retained messages) to its directory every ``autosave_interval_s`` seconds
and on a clean stop, and reads them back on the next start: a kill -9 loses what came after
the last save.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from eslserver.broker import EmbeddedBroker, free_port
from eslserver.broker_mosquitto import find_mosquitto

__all__ = [
    "MOSQUITTO",
    "MOSQUITTO_PASSWD",
    "MosquittoBroker",
    "TcpProxy",
    "TlsFiles",
    "broker",
    "broker_url",
    "embedded_broker",
    "free_port",
    "make_tls_files",
    "mosquitto",
    "wait_port",
]

MOSQUITTO: str | None = find_mosquitto()
MOSQUITTO_PASSWD: str | None = shutil.which("mosquitto_passwd")

_START_TIMEOUT_S = 5.0


async def wait_port(host: str, port: int, timeout: float = _START_TIMEOUT_S) -> None:
    """Return once a TCP connection to host:port succeeds; TimeoutError after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() > deadline:
                raise TimeoutError(f"nothing accepts connections on {host}:{port} after {timeout} s") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: a CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TlsFiles:
    """Write a fresh throw-away CA and two leaf certificates (EC P-256, valid one day)."""
    now = dt.datetime.now(dt.UTC)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("esl test CA")).issuer_name(name("esl test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder().subject_name(name(common)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH if server
                                                  else x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key",
                     directory / "client.pem", directory / "client.key")
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for (cert, key), cert_path, key_path in (
        (leaf("127.0.0.1", True), files.server_cert, files.server_key),
        (leaf("esl-client", False), files.client_cert, files.client_key),
    ):
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(key, key_path)
    return files


class MosquittoBroker:
    """A mosquitto child process on 127.0.0.1:`port` (a free port by default).

    `start()` may be called again after `stop()`/`kill()` to restart on the same port.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        tls: TlsFiles | None = None,
        require_client_cert: bool = False,
        persistence: bool = False,
        autosave_interval_s: int = 1,
    ) -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed")
        if autosave_interval_s < 1:
            raise ValueError(f"autosave_interval_s must be >= 1 (0 never saves), got {autosave_interval_s!r}")
        self.port = port if port is not None else free_port()
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls = tls
        self.require_client_cert = require_client_cert
        self.persistence = persistence
        self.autosave_interval_s = autosave_interval_s
        self._dir = tempfile.TemporaryDirectory(prefix="esl-mosquitto-")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        """What mosquitto wrote so far (for failure messages)."""
        path = Path(self._dir.name) / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _config(self) -> Path:
        lines = [
            f"listener {self.port} 127.0.0.1",
            "user root",  # stay the current user (only meaningful when run as root)
            *(["persistence true", f"persistence_location {self._dir.name}/",
               f"autosave_interval {self.autosave_interval_s}"] if self.persistence else ["persistence false"]),
            f"log_dest file {Path(self._dir.name) / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "max_queued_messages 10000",
            "set_tcp_nodelay true",  # as a production broker for low-latency traffic should
        ]
        if self.tls is not None:
            lines += [f"cafile {self.tls.ca_file}", f"certfile {self.tls.server_cert}",
                      f"keyfile {self.tls.server_key}"]
            if self.require_client_cert:
                lines.append("require_certificate true")
        if self.password_file is None:
            lines.append("allow_anonymous true")
        else:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        path = Path(self._dir.name) / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    async def start(self) -> None:
        """Start mosquitto and wait until it accepts connections."""
        assert MOSQUITTO is not None
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError("mosquitto is already running")
        self._proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            [MOSQUITTO, "-c", str(self._config())],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self._proc.returncode}: {self.log}")
            try:
                await wait_port("127.0.0.1", self.port, timeout=0.05)
                return
            except TimeoutError:
                if loop.time() > deadline:
                    await self.stop()
                    raise TimeoutError(f"mosquitto did not listen on {self.port}: {self.log}") from None

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 3 s; wait for the process to be gone. Safe twice."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        await _reap(proc, 3.0)

    def kill(self) -> None:
        """SIGKILL at once (a broker crash); the process is reaped before this returns."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=5)

    async def aclose(self) -> None:
        await self.stop()
        self._dir.cleanup()


async def _reap(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    while proc.poll() is None:
        if loop.time() > deadline:
            proc.kill()
            proc.wait(timeout=5)
            return
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def mosquitto(
    port: int | None = None,
    *,
    password_file: Path | None = None,
    acl_file: Path | None = None,
    tls: TlsFiles | None = None,
    require_client_cert: bool = False,
) -> AsyncIterator[str]:
    """A running mosquitto for the duration of the block; yields its URL."""
    broker = MosquittoBroker(port, password_file=password_file, acl_file=acl_file, tls=tls,
                             require_client_cert=require_client_cert)
    try:
        await broker.start()
        yield broker.url
    finally:
        await broker.aclose()


@contextlib.asynccontextmanager
async def embedded_broker(port: int = 0, implementation: str = "amqtt") -> AsyncIterator[str]:
    """eslserver's embedded broker, by default its amqtt path (in this event loop); yields its URL."""
    async with EmbeddedBroker(port=port, implementation=implementation) as broker:
        yield broker.url


class TcpProxy:
    """TCP relay 127.0.0.1:`port` → 127.0.0.1:`upstream_port` whose connections a test can cut.

    Cutting aborts both sockets (no MQTT DISCONNECT reaches the broker), as a crash or a
    network failure would: the broker publishes last wills and keeps persistent sessions.
    """

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self._port = 0
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._port, "the proxy is not started"
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def accept(self) -> None:
        """Listen (again, on the same port) for connections to relay."""
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self._port)
            self._port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Stop listening: new connections are refused, as by a host whose broker is down."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> Self:
        await self.accept()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        await self.refuse()
        tasks = list(self._pipes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def cut(self) -> None:
        """Abort every relayed connection now (RST to both ends)."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst), name="tcp-proxy pipe")
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
            dst.close()  # end of stream: pass it on, after the buffered bytes
        except OSError:
            dst.transport.abort()
        finally:
            self._writers.discard(dst)


@pytest.fixture
async def broker() -> AsyncIterator[str]:
    """One fresh broker per test, for tests about something else than the broker: Mosquitto
    when it is installed, else the embedded amqtt broker."""
    if MOSQUITTO is not None:
        async with mosquitto() as url:
            yield url
    else:
        async with embedded_broker() as url:
            yield url


@pytest.fixture(params=["mosquitto", "amqtt"])
async def broker_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A fresh broker per test, once Mosquitto and once the embedded amqtt broker."""
    if request.param == "mosquitto":
        async with mosquitto() as url:
            yield url
    else:
        async with embedded_broker() as url:
            yield url
