"""The MQTT broker `esl serve` and `esl demo` run when no broker URL is configured.

`EmbeddedBroker` listens on one TCP port of ``host`` (loopback by default; port 0 picks a free
one) and runs one of two implementations, chosen by ``implementation``:

* ``"mosquitto"``: a Mosquitto child process (`eslserver.broker_mosquitto`), the broker stores
  run in production;
* ``"amqtt"``: amqtt in our own event loop (`eslserver.broker_amqtt`, with the fixes amqtt
  0.12.1 needs), for machines without Mosquitto;
* ``"auto"`` (the default): Mosquitto when a ``mosquitto`` binary is found, amqtt otherwise.

Both promise what the server and gateways rely on, as MQTT 3.1.1 says (and
tests/test_broker_conformance.py checks against both): retained messages of every QoS go to
new subscribers; a persistent session (``clean_session=False``) keeps its subscriptions and the
QoS 1/2 messages published while its client was away; unacknowledged QoS 1/2 messages are sent
again when the client reconnects; a client's will is published when its connection fails or its
keepalive expires; and a client gets only what it subscribed to. Sessions and retained messages
live in memory: they survive a client's restart, not the broker's.

Given access rules (``access``, an `eslserver.mqtt_access.AccessSnapshot`: what `esl serve`
and `esl demo` always give), it lets a client in only with an active identity's password and
allows it only its own topics, both implementations alike (tests/test_security_mqtt.py);
`EmbeddedBroker.set_access` applies new rules at once, dropping the clients they no longer let
in. Without, it lets every client in: only tests run it so.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from amqtt.broker import Broker  # type: ignore[import-untyped]
from amqtt.errors import BrokerError as AmqttBrokerError  # type: ignore[import-untyped]

from eslserver.broker_amqtt import AccessHolder, OpenAuthPlugin, enforce_access, fixed_amqtt_broker
from eslserver.broker_mosquitto import MosquittoProcess, find_mosquitto
from eslserver.config import EMBEDDED_BROKERS as IMPLEMENTATIONS

if TYPE_CHECKING:
    from eslserver.mqtt_access import AccessSnapshot

__all__ = ["IMPLEMENTATIONS", "BrokerError", "EmbeddedBroker", "OpenAuthPlugin", "free_port"]

_log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started (port taken, bad host, Mosquitto missing or failing)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (bind to port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """The embedded broker on ``host:port`` (port 0 = pick a free one) as an async context manager.

    `directory` holds Mosquitto's generated configuration, log, password and ACL files (a
    temporary directory when None); amqtt writes nothing. `access`: the access rules to enforce
    (None: every client is let in).

    >>> async with EmbeddedBroker() as broker:   # doctest: +SKIP
    ...     print(broker.url, broker.implementation)   # mqtt://127.0.0.1:PORT mosquitto
    """

    _amqtt_running = 0  # amqtt brokers started and not yet closed, in this process

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, implementation: str = "auto",
                 directory: Path | None = None, access: AccessSnapshot | None = None) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}, got {implementation!r}")
        self.host = host
        self.requested = implementation
        self.directory = directory
        self._requested_port = port
        self._port: int | None = None
        self._amqtt: Broker | None = None
        self._mosquitto: MosquittoProcess | None = None
        self._closed = False
        self._access = access
        self._holder = AccessHolder(access) if access is not None else None

    @property
    def access(self) -> AccessSnapshot | None:
        """The access rules enforced now (None: every client is let in)."""
        return self._access

    async def set_access(self, access: AccessSnapshot) -> None:
        """Enforce `access` from now on: a client it no longer lets in (revoked, or its password
        changed) is disconnected at once and its session forgotten."""
        if self._holder is None:
            raise BrokerError("this embedded broker was started without access rules")
        self._access = self._holder.current = access
        if self._mosquitto is not None:
            await self._mosquitto.set_access(access)
        if self._amqtt is not None:
            await enforce_access(self._amqtt)

    @property
    def port(self) -> int:
        """The TCP port the broker listens on (known once started)."""
        if self._port is None:
            raise BrokerError("the embedded broker is not started")
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://HOST:PORT`` for clients (``MqttSettings.from_url``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"mqtt://{host}:{self.port}"

    @property
    def implementation(self) -> str:
        """``"mosquitto"`` or ``"amqtt"``: what runs (known once started)."""
        if self._mosquitto is not None:
            return "mosquitto"
        if self._amqtt is not None:
            return "amqtt"
        raise BrokerError("the embedded broker is not started")

    def _mosquitto_binary(self) -> str | None:
        if self.requested == "amqtt":
            return None
        binary = find_mosquitto()
        if binary is None and self.requested == "mosquitto":
            raise BrokerError("embedded_broker: 'mosquitto' was asked for, but no mosquitto binary is on PATH "
                              "(install Mosquitto, or use 'auto' or 'amqtt')")
        return binary

    async def start(self) -> None:
        """Bind and start serving; raises `BrokerError` naming the port if it cannot."""
        if self._closed:
            raise BrokerError("the embedded broker was closed; make a new one")
        if self._port is not None:
            raise BrokerError("the embedded broker is already started")
        binary = self._mosquitto_binary()
        attempts = 3 if self._requested_port == 0 else 1
        last: Exception | None = None
        for _ in range(attempts):  # a port picked free may be taken before the broker binds it
            port = self._requested_port or free_port(self.host)
            try:
                if binary is not None:
                    await self._start_mosquitto(binary, port)
                else:
                    await self._start_amqtt(port)
            except (AmqttBrokerError, OSError, RuntimeError) as exc:
                last = exc
                continue
            self._port = port
            _log.info("embedded MQTT broker (%s) listening on %s", self.implementation, self.url)
            return
        hint = " (mqtt_port, or --broker-port, chooses another)" if self._requested_port else ""
        raise BrokerError(f"cannot start the embedded broker on {self.host}:{self._requested_port}: {last}{hint}")

    async def _start_mosquitto(self, binary: str, port: int) -> None:
        process = MosquittoProcess(binary, self.directory, access=self._access)
        try:
            await process.start(self.host, port)
        except BaseException:
            await process.aclose()  # its temporary directory
            raise
        self._mosquitto = process

    def _amqtt_config(self, port: int) -> dict[str, Any]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "timeout_disconnect_delay": 0,
        }

    async def _start_amqtt(self, port: int) -> None:
        broker = fixed_amqtt_broker(self._amqtt_config(port), self._holder)
        try:
            await broker.start()
        except BaseException:  # amqtt wraps bind errors in its BrokerError
            if EmbeddedBroker._amqtt_running == 0:
                await _drain_amqtt()
            raise
        self._amqtt = broker
        EmbeddedBroker._amqtt_running += 1

    async def aclose(self) -> None:
        """Stop the broker, close client connections and wait until it is gone. Safe twice."""
        self._closed = True
        mosquitto, self._mosquitto = self._mosquitto, None
        amqtt_broker, self._amqtt = self._amqtt, None
        if mosquitto is not None:
            await mosquitto.aclose()
        if amqtt_broker is not None:
            EmbeddedBroker._amqtt_running -= 1
            try:
                await amqtt_broker.shutdown()
            finally:
                if EmbeddedBroker._amqtt_running == 0:  # amqtt's tasks are not tagged by broker
                    await _drain_amqtt()
        if mosquitto is not None or amqtt_broker is not None:
            _log.info("embedded MQTT broker on port %s stopped", self._port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def _drain_amqtt() -> None:
    """Cancel and await whatever amqtt tasks are left (session handlers of clients still
    connected at shutdown). Only called when no other amqtt broker runs in the process."""
    me = asyncio.current_task()
    for _ in range(3):
        await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done() and _is_amqtt_task(t)]
    for task in left:
        task.cancel()
    if left:
        await asyncio.gather(*left, return_exceptions=True)


def _is_amqtt_task(task: asyncio.Task[Any]) -> bool:
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None)
    filename = getattr(code, "co_filename", "")
    return "/amqtt/" in str(filename) or str(filename).endswith("broker_amqtt.py")
