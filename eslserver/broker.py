"""An MQTT broker inside our own process (amqtt), for `esl demo` and tests.

`EmbeddedBroker` runs amqtt's `Broker` on one TCP listener bound to ``host`` (loopback by
default) and a free port, with no websocket listener, no ``$SYS`` topics and no packet logging.

Promised: QoS 1, retained messages, last wills and persistent sessions (``clean_session=False``
keeps subscriptions and queues QoS 1 messages for a disconnected client, in memory). amqtt's own
``AnonymousAuthPlugin`` marks every client it lets in as anonymous, and amqtt keeps no session
for anonymous clients; so instead of it we install `OpenAuthPlugin`, which lets every client in
without that mark. The embedded broker is therefore open to anyone who can reach the port: keep
it on loopback (the default) or put a real broker in front of real stores.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from types import TracebackType
from typing import Any, Self

from amqtt.broker import Broker  # type: ignore[import-untyped]
from amqtt.contexts import BaseContext  # type: ignore[import-untyped]
from amqtt.errors import BrokerError as AmqttBrokerError  # type: ignore[import-untyped]
from amqtt.plugins.base import BaseAuthPlugin  # type: ignore[import-untyped]
from amqtt.session import Session  # type: ignore[import-untyped]

__all__ = ["BrokerError", "EmbeddedBroker", "OpenAuthPlugin", "free_port"]

_log = logging.getLogger(__name__)


class BrokerError(RuntimeError):
    """The embedded broker could not be started (port taken, bad host)."""


class OpenAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """amqtt authentication plugin that accepts every client as a named (non-anonymous) one.

    Why: amqtt drops the session of anonymous clients on disconnect, which would break
    ``clean_session=False`` (gateways must get the jobs published while they were away).
    """

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)

    async def authenticate(self, *, session: Session) -> bool:
        del session
        return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (bind to port 0, read it, close)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """amqtt broker on ``host:port`` (port 0 = pick a free one) as an async context manager.

    >>> async with EmbeddedBroker() as broker:   # doctest: +SKIP
    ...     print(broker.url)                   # mqtt://127.0.0.1:PORT
    """

    _running = 0  # started and not yet closed, in this process

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port!r}")
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._broker: Broker | None = None
        self._closed = False

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

    def _config(self, port: int) -> dict[str, Any]:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            "timeout_disconnect_delay": 0,
            "plugins": {f"{__name__}.OpenAuthPlugin": {}},
        }

    async def start(self) -> None:
        """Bind and start serving; raises `BrokerError` if the port cannot be bound."""
        if self._broker is not None:
            raise BrokerError("the embedded broker is already started")
        if self._closed:
            raise BrokerError("the embedded broker was closed; make a new one")
        attempts = 3 if self._requested_port == 0 else 1
        last: Exception | None = None
        for _ in range(attempts):  # a port picked free may be taken before amqtt binds it
            port = self._requested_port or free_port(self.host)
            broker = Broker(self._config(port))
            try:
                await broker.start()
            except (AmqttBrokerError, OSError) as exc:  # amqtt wraps bind errors in its BrokerError
                last = exc
                if EmbeddedBroker._running == 0:
                    await _drain(broker)
                continue
            self._broker, self._port = broker, port
            EmbeddedBroker._running += 1
            _log.info("embedded MQTT broker listening on %s", self.url)
            return
        raise BrokerError(f"cannot start the embedded broker on {self.host}:{self._requested_port}: {last}")

    async def aclose(self) -> None:
        """Stop the broker, close client connections and wait for amqtt's tasks. Safe twice."""
        self._closed = True
        broker, self._broker = self._broker, None
        if broker is None:
            return
        EmbeddedBroker._running -= 1
        try:
            await broker.shutdown()
        finally:
            if EmbeddedBroker._running == 0:  # amqtt's tasks are not tagged by broker
                await _drain(broker)
        _log.info("embedded MQTT broker on port %s stopped", self._port)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def _drain(broker: Broker) -> None:
    """Cancel and await whatever amqtt tasks are left (session handlers of clients still
    connected at shutdown). Only called when no other embedded broker runs in the process."""
    del broker
    me = asyncio.current_task()
    for _ in range(3):
        await asyncio.sleep(0)
    left = [
        t
        for t in asyncio.all_tasks()
        if t is not me and not t.done() and _is_amqtt_task(t)
    ]
    for task in left:
        task.cancel()
    if left:
        await asyncio.gather(*left, return_exceptions=True)


def _is_amqtt_task(task: asyncio.Task[Any]) -> bool:
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None)
    filename = getattr(code, "co_filename", "")
    return "/amqtt/" in str(filename)
