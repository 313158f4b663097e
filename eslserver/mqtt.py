"""The one MQTT connection wrapper of the server and the gateway (aiomqtt 2.x on paho-mqtt 2.x).

`MqttConnection` owns a background task that connects, and after any loss reconnects forever
with exponential backoff and jitter, re-subscribing every time. What it promises:

* **Acknowledge after handling.** A QoS 1 message is acknowledged (PUBACK) only after every
  handler it was dispatched to has returned, so with ``clean_session=False`` a message whose
  handler never finished (crash, kill -9, lost connection) is delivered again by the broker.
  Delivery is therefore *at least once*: handlers must be idempotent. A handler that raises is
  logged (once per subscription and error kind) and the message acknowledged anyway, so a
  poison message cannot block a subscription forever.
* **"Not now" is not acknowledged.** A handler that raises `Retry` (a transient fault: the
  database cannot commit) gets the same message again after a pause, ``RETRY_MIN_S`` doubling
  to ``RETRY_MAX_S``, for as long as the connection lives, and the message stays
  unacknowledged meanwhile; when the connection is lost it is left unacknowledged, and the
  broker delivers it again on the next connection. The failure is logged once, and its end once.
* **Publish survives outages.** `MqttConnection.publish` waits for a connection (up to
  ``timeout``) and returns once the broker acknowledged a QoS 1 message; if the connection
  drops before the acknowledgement it publishes again on the next connection (at least once).
* **State changes are logged once**: "connected to", "lost connection to … retrying",
  "reconnected to", not one line per attempt.

Messages go to every subscription whose filter matches the topic (aiomqtt's `Topic.matches`);
each subscription runs at most ``concurrency`` handlers at once, in arrival order when it is 1.
With concurrency above 1 (or overlapping filters) acknowledgements may leave in another order
than the messages arrived; mosquitto and amqtt accept that.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import random
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import quote, unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.reasoncodes import ReasonCode

from eslserver.logs import FailureLog

if TYPE_CHECKING:
    from eslserver.config import Settings

__all__ = [
    "redact_url",
    "Handler",
    "Message",
    "MqttConnection",
    "MqttError",
    "MqttSettings",
    "MqttSettingsError",
    "MqttUnavailable",
    "RETRY_MAX_S",
    "RETRY_MIN_S",
    "Retry",
    "Will",
]

_log = logging.getLogger(__name__)
_paho_log = logging.getLogger(__name__ + ".paho")  # paho's packet log, at debug level

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_CONNECT_TIMEOUT_S = 5.0  # CONNACK / SUBACK / graceful DISCONNECT waits of one attempt
_NO_HANDLER_LOG_LIMIT = 1000  # topics remembered for "no handler" warnings
RETRY_MIN_S = 0.2
"""The first pause before a handler that raised `Retry` gets its message again (then doubled)."""
RETRY_MAX_S = 10.0
"""The longest pause between two attempts at a message whose handler raises `Retry`."""


class MqttError(Exception):
    """Base of this module's errors."""


class MqttSettingsError(MqttError, ValueError):
    """A broker URL or setting is invalid; the message names the field and the value."""


class MqttUnavailable(MqttError):
    """No connection to the broker within the time allowed, or the connection is closed."""


class Retry(Exception):
    """Raised by a subscription handler: not now. The message is not acknowledged; it is
    handled again after a pause (`RETRY_MIN_S` doubling to `RETRY_MAX_S`) while its connection
    lives, and redelivered by the broker after a reconnection. For transient faults only (the
    database cannot commit): a message that always fails must raise something else, which is
    logged and acknowledged, or it would hold a handler forever."""


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to reach the broker. Validated at construction.

    ``tls`` with no ``ca_file`` verifies the broker against the system's CA store;
    ``tls_insecure`` turns off certificate and host name checks (tests, self-signed brokers).
    """

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    keepalive: int = 30

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host or any(c.isspace() for c in self.host):
            raise MqttSettingsError(f"host must be a non-empty name or address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise MqttSettingsError(f"port must be an integer 1..65535, got {self.port!r}")
        if isinstance(self.keepalive, bool) or not isinstance(self.keepalive, int) or not 1 <= self.keepalive <= 65535:
            raise MqttSettingsError(f"keepalive must be an integer 1..65535 seconds, got {self.keepalive!r}")
        if self.password is not None and self.username is None:
            raise MqttSettingsError("password is set but username is None")
        if self.username == "":
            raise MqttSettingsError("username must be None or non-empty, got ''")
        if self.key_file is not None and self.cert_file is None:
            raise MqttSettingsError(f"key_file {self.key_file!r} is set but cert_file is None")
        if not self.tls:
            for name in ("ca_file", "cert_file", "key_file"):
                if getattr(self, name) is not None:
                    raise MqttSettingsError(f"{name} {getattr(self, name)!r} is set but tls is False")
            if self.tls_insecure:
                raise MqttSettingsError("tls_insecure is True but tls is False")

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> MqttSettings:
        """Parse ``mqtt://[user[:password]@]host[:port]`` or ``mqtts://…`` (TLS, port 8883).

        User name and password are percent-decoded. ``overrides`` replace fields afterwards
        (e.g. ``ca_file=...``, ``keepalive=...``). Raises `MqttSettingsError` naming the value
        (with any password masked).
        """
        shown = redact_url(url)
        try:
            parts = urlsplit(url)
        except ValueError as exc:
            raise MqttSettingsError(f"MQTT URL {shown!r} is malformed: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS:
            raise MqttSettingsError(
                f"MQTT URL {shown!r} has scheme {parts.scheme!r}; expected 'mqtt' or 'mqtts'"
            )
        try:
            port = parts.port
        except ValueError:
            raise MqttSettingsError(
                f"MQTT URL {shown!r} has a bad port; expected an integer 1..65535"
            ) from None
        if port == 0:
            raise MqttSettingsError(f"MQTT URL {shown!r} has port 0; expected 1..65535")
        host = parts.hostname
        if not host:
            raise MqttSettingsError(f"MQTT URL {shown!r} has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise MqttSettingsError(
                f"MQTT URL {shown!r} has a path, query or fragment; expected only scheme://[user@]host[:port]"
            )
        values: dict[str, Any] = {
            "host": host,
            "port": port if port is not None else _DEFAULT_PORTS[scheme],
            "tls": scheme == "mqtts",
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password is not None else None,
        }
        known = {f.name for f in dataclasses.fields(cls)}
        for name in overrides:
            if name not in known:
                raise MqttSettingsError(f"unknown MQTT setting {name!r} (known: {', '.join(sorted(known))})")
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_settings(cls, settings: Settings, url: str | None = None) -> MqttSettings:
        """The broker connection `settings` describe: `from_url` of ``broker_url`` (or of
        `url`, the embedded broker's address when there is no ``broker_url``) with
        ``mqtt_username``, ``mqtt_password``, ``mqtt_ca_file``, ``mqtt_cert_file``,
        ``mqtt_key_file`` and ``mqtt_insecure`` on top. The server and the gateway both call
        this, so one ``esl.toml`` means the same broker connection to both."""
        url = url if url is not None else settings.broker_url
        if url is None:
            raise MqttSettingsError("broker_url is not set: name the broker (mqtt://host:port or mqtts://host:port)")
        overrides: dict[str, Any] = {}
        for ours, theirs in (("mqtt_username", "username"), ("mqtt_password", "password"),
                             ("mqtt_ca_file", "ca_file"), ("mqtt_cert_file", "cert_file"),
                             ("mqtt_key_file", "key_file")):
            if getattr(settings, ours) is not None:
                overrides[theirs] = getattr(settings, ours)
        if settings.mqtt_insecure:
            overrides["tls_insecure"] = True
        return cls.from_url(url, **overrides)

    @property
    def url(self) -> str:
        """``mqtt(s)://[user@]host:port``; never contains the password (safe to log)."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{quote(self.username, safe='')}@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{user}{host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context for these settings (None without TLS); reads the files now."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise MqttSettingsError(f"ca_file {self.ca_file!r} cannot be loaded: {exc}") from None
        if self.cert_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise MqttSettingsError(
                    f"cert_file {self.cert_file!r} / key_file {self.key_file!r} cannot be loaded: {exc}"
                ) from None
        if self.tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        context.sslsocket_class = _ClosingSSLSocket
        return context


class _ClosingSSLSocket(ssl.SSLSocket):
    """An SSLSocket that closes itself when its handshake fails.

    paho-mqtt 2.2 (`Client._ssl_wrap_socket`) leaves the socket open when the handshake fails
    (untrusted broker certificate...), leaking one file descriptor per reconnect attempt.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def redact_url(url: str) -> str:
    """`url` with the password part of its authority replaced by ``***``."""
    scheme_end = url.find("://")
    if scheme_end < 0:
        return url
    rest_start = scheme_end + 3
    at = url.find("@", rest_start)
    slash = url.find("/", rest_start)
    if at < 0 or (0 <= slash < at):
        return url
    colon = url.find(":", rest_start, at)
    if colon < 0:
        return url
    return url[: colon + 1] + "***" + url[at:]


@dataclass(frozen=True)
class Will:
    """Last will: published by the broker when the connection dies without a clean disconnect."""

    topic: str
    payload: bytes | str
    qos: int = 1
    retain: bool = False

    def __post_init__(self) -> None:
        _check_topic(self.topic)
        _check_qos(self.qos)


@dataclass(frozen=True)
class Message:
    """One received message as handed to a subscription handler."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


Handler = Callable[[Message], Awaitable[None]]


def _check_topic(topic: str) -> None:
    try:
        aiomqtt.Topic(topic)
    except (TypeError, ValueError):
        raise MqttSettingsError(f"topic {topic!r} is not a valid MQTT topic name") from None


def _check_qos(qos: int) -> None:
    if isinstance(qos, bool) or qos not in (0, 1, 2):
        raise MqttSettingsError(f"qos must be 0, 1 or 2, got {qos!r}")


# --- the two private accesses to aiomqtt: manual acknowledgement --------------------------
# aiomqtt has no public API for manual acks (https://github.com/empicano/aiomqtt/issues/345),
# so we reach the paho client it wraps. paho then sends no PUBACK/PUBCOMP by itself.


def _enable_manual_ack(client: aiomqtt.Client) -> None:
    """Make paho leave QoS 1/2 acknowledgements to us; must be called before connecting."""
    client._client.manual_ack_set(True)  # private: aiomqtt issue #345


def _send_ack(client: aiomqtt.Client, mid: int, qos: int) -> bool:
    """Acknowledge message `mid` on `client`'s connection; False if that connection is gone."""
    rc = client._client.ack(mid, qos)  # private: aiomqtt issue #345
    return rc == paho.MQTT_ERR_SUCCESS


def _consume_disconnect_error(client: aiomqtt.Client) -> None:
    """Mark the client's "disconnected" error as seen when aiomqtt's exit path did not.

    Otherwise asyncio logs "Future exception was never retrieved" for a connection that
    died while we were subscribing or stopping (aiomqtt keeps it in a private future).
    """
    fut = client._disconnected  # private: no public way to read it
    if fut.done() and not fut.cancelled():
        fut.exception()


def _describe(exc: BaseException) -> str:
    """aiomqtt says "Disconnected during message iteration"; the cause says why."""
    cause = exc.__cause__
    return f"{exc}: {cause}" if cause is not None else str(exc)


# --- internals ----------------------------------------------------------------------------


class _Link:
    """One broker connection (one aiomqtt client). `lost` resolves when it is gone."""

    __slots__ = ("client", "lost")

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def mark_lost(self) -> None:
        if not self.lost.done():
            self.lost.set_result(None)


class _Delivery:
    """A received message in the hands of `pending` handlers; acknowledged when all returned."""

    __slots__ = ("link", "message", "mid", "pending")

    def __init__(self, link: _Link, message: Message, mid: int, pending: int) -> None:
        self.link = link
        self.message = message
        self.mid = mid
        self.pending = pending

    def finish_one(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.message.qos > 0 and not _send_ack(self.link.client, self.mid, self.message.qos):
            _log.debug("message %d on %s handled after its connection closed; the broker redelivers it",
                       self.mid, self.message.topic)


@dataclass(eq=False)
class _Subscription:
    topic_filter: str
    handler: Handler
    qos: int
    concurrency: int
    queue: asyncio.Queue[_Delivery] = field(default_factory=asyncio.Queue)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    errors_seen: set[str] = field(default_factory=set)
    retrying: FailureLog = field(init=False)
    """Messages of this subscription whose handler asks to retry: logged once, and its end once."""

    def __post_init__(self) -> None:
        self.retrying = FailureLog(_log, f"handling messages on {self.topic_filter} (left unacknowledged and "
                                         f"retried, every {RETRY_MIN_S:g} s up to {RETRY_MAX_S:g} s)")


class MqttConnection:
    """A long-lived MQTT client connection; use as ``async with MqttConnection(...) as mqtt:``.

    Entering starts the background connection task and returns at once (it does not wait for
    the broker: await ``connected.wait()`` for that); leaving disconnects cleanly (no last
    will), cancels running handlers (their messages stay unacknowledged) and awaits every task.
    Leaving waits for a connection attempt under way to end (at most about 5 s, when a broker
    accepts TCP but never answers CONNECT).

    Each connection is a new aiomqtt client; a message handled after its connection was lost
    cannot be acknowledged any more and is redelivered on the next one (handled twice).
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        client_id: str,
        clean_session: bool = False,
        will: Will | None = None,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        reconnect_min_s: float = 0.2,
        reconnect_max_s: float = 10.0,
    ) -> None:
        if not client_id and not clean_session:
            raise MqttSettingsError("client_id must be non-empty when clean_session is False")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise MqttSettingsError(
                f"reconnect_min_s ({reconnect_min_s!r}) must be > 0 and <= reconnect_max_s ({reconnect_max_s!r})"
            )
        self.settings = settings
        self.client_id = client_id
        self.clean_session = clean_session
        self.will = will
        self.on_connect = on_connect
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self._ssl_context = settings.ssl_context()
        self.connected = asyncio.Event()
        """Set while a connection is up (subscriptions made); cleared when it is lost."""
        self._subscriptions: list[_Subscription] = []
        self._link: _Link | None = None
        self._ready: asyncio.Future[_Link] | None = None
        self._stop = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._no_handler_topics: set[str] = set()

    @property
    def is_connected(self) -> bool:
        """True while a connection to the broker is up."""
        return self.connected.is_set()

    # --- subscriptions ---------------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler, *, qos: int = 1, concurrency: int = 1) -> None:
        """Send messages matching `topic_filter` to `handler`, at most `concurrency` at once.

        May be called before entering or at any time after; the subscription is (re)made on
        every connection. QoS 1 messages are acknowledged only after the handler returned.
        """
        try:
            aiomqtt.Wildcard(topic_filter)
        except (TypeError, ValueError):
            raise MqttSettingsError(f"topic filter {topic_filter!r} is not a valid MQTT topic filter") from None
        _check_qos(qos)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise MqttSettingsError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if self._closed:
            raise MqttUnavailable("the MQTT connection is closed")
        sub = _Subscription(topic_filter, handler, qos, concurrency)
        self._subscriptions.append(sub)
        if self._runner is not None:
            self._start_workers(sub)
            link = self._link
            if link is not None and not link.lost.done():
                self._spawn(self._subscribe_late(link, sub), f"mqtt-subscribe {topic_filter}")

    def _start_workers(self, sub: _Subscription) -> None:
        for i in range(sub.concurrency):
            task = asyncio.create_task(self._work(sub), name=f"mqtt-handler {sub.topic_filter} #{i}")
            sub.workers.append(task)

    async def _subscribe_late(self, link: _Link, sub: _Subscription) -> None:
        try:
            await link.client.subscribe(sub.topic_filter, sub.qos, timeout=_CONNECT_TIMEOUT_S)
        except aiomqtt.MqttError as exc:  # the next connection subscribes again
            _log.debug("late subscription to %s failed (%s); made on reconnect", sub.topic_filter, exc)

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _work(self, sub: _Subscription) -> None:
        while True:
            delivery = await sub.queue.get()
            if delivery.link.lost.done() and delivery.message.qos > 0 and not self.clean_session:
                continue  # its connection is gone: the broker redelivers it on the next one
            if await self._handle(sub, delivery):
                delivery.finish_one()

    async def _handle(self, sub: _Subscription, delivery: _Delivery) -> bool:
        """Run the handler on `delivery` until it does not raise `Retry`: True when done (to be
        acknowledged), False when its connection was lost while retrying (left unacknowledged)."""
        delay = RETRY_MIN_S
        while True:
            try:
                await sub.handler(delivery.message)
            except asyncio.CancelledError:
                raise
            except Retry as exc:
                sub.retrying.failed(exc, trace=False)  # "not now": its reason is the whole story
                lost = delivery.link.lost
                await asyncio.wait({lost}, timeout=delay)
                if lost.done():
                    _log.info("message %d on %s left unacknowledged (its connection was lost while it was retried); "
                              "the broker delivers it again", delivery.mid, delivery.message.topic)
                    return False
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            except Exception as exc:  # noqa: BLE001 - the poison guard: log, then acknowledge anyway
                kind = type(exc).__qualname__
                if kind not in sub.errors_seen:
                    sub.errors_seen.add(kind)
                    _log.exception("handler for %s failed on topic %s (%s); message acknowledged, "
                                   "further %s errors of this subscription are logged at debug level",
                                   sub.topic_filter, delivery.message.topic, kind, kind)
                else:
                    _log.debug("handler for %s failed on topic %s: %r", sub.topic_filter,
                               delivery.message.topic, exc)
                return True
            sub.retrying.ok()
            return True

    # --- publishing ------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish; for QoS 1 return once the broker acknowledged it.

        Waits for a connection while there is none. If the connection drops before the
        acknowledgement, publishes again on the next one. ``timeout`` (seconds, None = no
        limit) bounds the whole call; past it raises `MqttUnavailable`, as does a closed
        connection.
        """
        _check_topic(topic)
        _check_qos(qos)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            link = await self._wait_link(deadline, timeout)
            if await self._publish_on(link, topic, payload, qos, retain, deadline, timeout):
                return

    async def _wait_link(self, deadline: float | None, timeout: float | None) -> _Link:
        loop = asyncio.get_running_loop()
        while True:
            ready = self._ready_future()
            if not ready.done():
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait({ready}, timeout=remaining)
                if not ready.done():
                    raise MqttUnavailable(f"no connection to {self.settings.url} within {timeout} s")
            link = ready.result()  # raises MqttUnavailable once closed
            if not link.lost.done():
                return link
            await asyncio.sleep(0)  # the runner replaces the future as it notices the loss

    async def _publish_on(
        self,
        link: _Link,
        topic: str,
        payload: bytes | str,
        qos: int,
        retain: bool,
        deadline: float | None,
        timeout: float | None,
    ) -> bool:
        """True when published; False when `link` was lost first (publish again)."""
        loop = asyncio.get_running_loop()
        pub = asyncio.ensure_future(link.client.publish(topic, payload, qos, retain, timeout=math.inf))
        try:
            remaining = None if deadline is None else max(0.0, deadline - loop.time())
            await asyncio.wait({pub, link.lost}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            if pub.done():
                exc = pub.exception()
                if exc is None:
                    return True
                if not isinstance(exc, aiomqtt.MqttError):
                    raise exc
                # paho refused (not connected): wait until the link is declared lost
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                await asyncio.wait({link.lost}, timeout=remaining)
            if link.lost.done():
                return False
            raise MqttUnavailable(f"{self.settings.url} did not acknowledge a message on {topic!r} within {timeout} s")
        finally:
            if not pub.done():
                pub.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await pub

    def _ready_future(self) -> asyncio.Future[_Link]:
        if self._ready is None:
            self._ready = asyncio.get_running_loop().create_future()
        return self._ready

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._runner is not None or self._closed:
            raise MqttError("an MqttConnection can be entered once")
        for sub in self._subscriptions:
            self._start_workers(sub)
        self._ready_future()
        self._runner = asyncio.create_task(self._run(), name=f"mqtt-connection {self.client_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Disconnect cleanly, cancel handlers and await all tasks. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._runner is not None:
            await self._runner
        tasks = [t for sub in self._subscriptions for t in sub.workers] + list(self._side_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        ready = self._ready_future()
        if ready.done():
            self._ready = ready = asyncio.get_running_loop().create_future()
        ready.set_exception(MqttUnavailable(f"the MQTT connection to {self.settings.url} is closed"))
        ready.exception()  # retrieved: no "never retrieved" warning if nobody publishes
        self.connected.clear()

    def _new_client(self) -> aiomqtt.Client:
        s = self.settings
        will = None
        if self.will is not None:
            will = aiomqtt.Will(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        client = aiomqtt.Client(
            s.host,
            s.port,
            username=s.username,
            password=s.password,
            identifier=self.client_id or None,
            clean_session=self.clean_session,
            will=will,
            keepalive=s.keepalive,
            timeout=_CONNECT_TIMEOUT_S,
            tls_context=self._ssl_context,
            logger=_paho_log,
            # Nagle + delayed ACK add ~40 ms to every small publish; shelf latency is our product
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        client.pending_calls_threshold = 100_000  # many publishes in flight are normal for us
        _enable_manual_ack(client)
        return client

    async def _run(self) -> None:
        """Connect, serve, and after a loss reconnect with backoff until told to stop."""
        loop = asyncio.get_running_loop()
        failures = 0
        ever_connected = False
        down_since = loop.time()
        down_logged = False
        while not self._stop.is_set():
            client = self._new_client()
            link = _Link(client)
            served = False
            try:
                async with client:
                    if self._stop.is_set():
                        return
                    await self._subscribe_all(client)
                    failures = 0
                    if ever_connected:
                        _log.info("reconnected to %s after %.1f s", self.settings.url, loop.time() - down_since)
                    else:
                        _log.info("connected to %s as %r", self.settings.url, self.client_id)
                    ever_connected, down_logged, served = True, False, True
                    await self._serve(link)
                    return  # asked to stop: leaving `async with` disconnects cleanly
            except Exception as exc:  # noqa: BLE001 - outermost boundary of the connection: log, retry
                unexpected = not isinstance(exc, aiomqtt.MqttError)
                if served:
                    down_since = loop.time()
                    _log.warning("lost connection to %s (%s); retrying", self.settings.url, _describe(exc),
                                 exc_info=unexpected)
                    down_logged = True
                elif not down_logged:
                    _log.warning("cannot connect to %s (%s); retrying", self.settings.url, _describe(exc),
                                 exc_info=unexpected)
                    down_logged = True
                else:
                    _log.debug("connecting to %s failed again: %s", self.settings.url, exc)
            finally:
                self._set_down(link)
                _consume_disconnect_error(client)
            if self._stop.is_set():
                return
            delay = min(self.reconnect_max_s, self.reconnect_min_s * 2.0 ** min(failures, 30))
            failures += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(random.uniform(delay / 2, delay)):
                    await self._stop.wait()

    async def _subscribe_all(self, client: aiomqtt.Client) -> None:
        if not self._subscriptions:
            return
        pairs = list(dict.fromkeys((s.topic_filter, s.qos) for s in self._subscriptions))
        granted: list[int | ReasonCode] = list(await client.subscribe(pairs, timeout=_CONNECT_TIMEOUT_S))
        for (topic_filter, _), code in zip(pairs, granted, strict=False):
            value = code if isinstance(code, int) else int(code.value)
            if value >= 0x80:
                _log.error("broker %s refused the subscription to %s", self.settings.url, topic_filter)

    async def _serve(self, link: _Link) -> None:
        """Dispatch messages until the link is lost (raises aiomqtt.MqttError) or stop is set."""
        self._link = link
        self._ready_future().set_result(link)
        self.connected.set()
        reader = asyncio.create_task(self._read(link), name=f"mqtt-reader {self.client_id}")
        stop = asyncio.create_task(self._stop.wait(), name=f"mqtt-stop {self.client_id}")
        if self.on_connect is not None:  # not awaited here: it may publish, and so need this loop
            self._spawn(self._call_on_connect(self.on_connect), f"mqtt-on-connect {self.client_id}")
        try:
            await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, stop):
                task.cancel()
            await asyncio.gather(reader, stop, return_exceptions=True)
        if self._stop.is_set():
            return
        error = None if reader.cancelled() else reader.exception()
        if error is not None:
            raise error
        raise aiomqtt.MqttError("the message stream ended")

    async def _call_on_connect(self, callback: Callable[[], Awaitable[None]]) -> None:
        try:
            await callback()
        except Exception:  # noqa: BLE001 - the user's callback: log it, keep the connection
            _log.exception("on_connect callback failed after connecting to %s", self.settings.url)

    def _set_down(self, link: _Link) -> None:
        link.mark_lost()
        if self._link is link:
            self._link = None
            self.connected.clear()
            if self._ready is not None and self._ready.done():
                self._ready = asyncio.get_running_loop().create_future()

    async def _read(self, link: _Link) -> None:
        async for raw in link.client.messages:
            self._dispatch(link, raw)

    def _dispatch(self, link: _Link, raw: aiomqtt.Message) -> None:
        payload = raw.payload if isinstance(raw.payload, bytes) else str(raw.payload).encode()
        message = Message(raw.topic.value, payload, raw.qos, raw.retain)
        targets = [s for s in self._subscriptions if raw.topic.matches(s.topic_filter)]
        delivery = _Delivery(link, message, raw.mid, len(targets))
        if not targets:
            if message.topic not in self._no_handler_topics and len(self._no_handler_topics) < _NO_HANDLER_LOG_LIMIT:
                self._no_handler_topics.add(message.topic)
                _log.warning("no handler for a message on %s (a subscription left in the broker's "
                             "session?); acknowledged and dropped", message.topic)
            delivery.pending = 1
            delivery.finish_one()
            return
        for sub in targets:
            sub.queue.put_nowait(delivery)
