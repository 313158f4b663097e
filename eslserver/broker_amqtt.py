"""The amqtt path of the embedded broker, with the fixes amqtt 0.12.1 needs to behave as MQTT 3.1.1.

amqtt is pure Python, so a laptop without Mosquitto still gets a broker. Version 0.12.1 (pinned
exactly in pyproject.toml; `fixed_amqtt_broker` refuses any other) breaks four promises we rely on; the
fixes live here only, as overrides in two subclasses (`_FixedBroker`, `_FixedHandler`) that no
other amqtt broker in the process sees:

1. **Messages reach clients that never subscribed.** On every CONNECT amqtt sends the connecting
   client the retained messages of *every* topic filter any client subscribed to (it loops over
   the broker's whole subscription table; introduced with "send retained messages for existing
   subscriptions", Yakifo/amqtt PR #248). A ``mosquitto_sub -t nothing/here`` thus received
   ``esl/demo/gateway/gw1/status``. Retained messages are now sent only in answer to a
   SUBSCRIBE, for its filters [MQTT-3.3.1-6]. No upstream issue names this bug.
2. **Unacknowledged QoS 1/2 messages are lost** (Yakifo/amqtt issue #401, open; PR #402): an
   outgoing message left the session's in-flight table after 5 s without PUBACK/PUBREC/PUBCOMP
   or when the connection dropped, so it was never sent again. It now stays in flight until it is
   acknowledged, and is sent again (DUP set, or PUBREL) when the session reconnects
   [MQTT-4.4.0-1]. Redeliveries and the messages queued while the client was away no longer make
   the session wait for their acknowledgements before it reads the client's SUBSCRIBEs.
3. **Keepalive never expires**: a client that goes silent stays "connected" forever and its will
   is never published. The connection is now closed after 1.5 x the keepalive [MQTT-3.1.2-24],
   as a network failure, so the will is published.
4. **Queued messages arrive marked retained**: messages kept for a persistent session while it
   was away are now delivered with the retain flag clear [MQTT-3.3.1-9].
5. **A CONNECT changes sessions before it is authenticated**: amqtt deletes the session of the
   client id a clean-session CONNECT names, or copies the new user name and password into the
   persistent session it names, and only then asks the authentication plugins; so a client with
   no password could wipe the server's subscriptions by connecting with its client id. With
   access rules (`AccessHolder`), a CONNECT is now checked first (user name and password, the
   will's topic, and that the client id's session belongs to the same user) and refused with
   CONNACK 5 ("not authorised", as Mosquitto answers) before it touches any session.

Access rules (`IdentityAuthPlugin`, `IdentityTopicPlugin`): amqtt's plugin API (0.12.1:
``authenticate(session=)`` and ``topic_filtering(session=, topic=, action=)`` with actions
publish, subscribe and receive) asks the server's current `eslserver.mqtt_access.AccessSnapshot`;
`enforce_access` drops the connections and sessions of identities the new rules no longer let
in (a revoked gateway is cut off at once, its will not published).

Known and left alone: amqtt delivers at the subscription's QoS rather than min(publish,
subscription), which only ever upgrades a delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import amqtt  # type: ignore[import-untyped]
from amqtt.broker import Broker  # type: ignore[import-untyped]
from amqtt.contexts import Action, BaseContext  # type: ignore[import-untyped]
from amqtt.errors import AMQTTError, MQTTError, NoDataError  # type: ignore[import-untyped]
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket  # type: ignore[import-untyped]
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler  # type: ignore[import-untyped]
from amqtt.mqtt.pubrel import PubrelPacket  # type: ignore[import-untyped]
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin  # type: ignore[import-untyped]
from amqtt.session import OUTGOING, Session  # type: ignore[import-untyped]
from amqtt.utils import gen_client_id  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from eslserver.mqtt_access import AccessSnapshot

__all__ = ["AMQTT_VERSION", "AccessHolder", "IdentityAuthPlugin", "IdentityTopicPlugin", "OpenAuthPlugin",
           "enforce_access", "fixed_amqtt_broker"]

AMQTT_VERSION = "0.12.1"
"""The amqtt release the fixes below were written against (and pyproject.toml pins)."""

_log = logging.getLogger(__name__)

_KEEPALIVE_GRACE = 1.5  # [MQTT-3.1.2-24]: close after 1.5 x the keepalive without a packet
_DROP_WAIT_S = 2.0  # how long `enforce_access` waits for a dropped connection to end
_REFUSALS_LOGGED = 1000  # user names whose refusal is remembered (logged once each)
_in_subscribe: contextvars.ContextVar[bool] = contextvars.ContextVar("esl_amqtt_in_subscribe", default=False)


class AccessHolder:
    """The access rules an amqtt broker applies now (`current`); the server replaces `current`
    when identities change, then calls `enforce_access`. amqtt copies its configuration, so a
    copy of the holder is the holder itself."""

    def __init__(self, snapshot: AccessSnapshot) -> None:
        self.current = snapshot
        self._refused: set[str] = set()

    def __copy__(self) -> AccessHolder:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> AccessHolder:
        return self

    def refusal(self, session: Session) -> str | None:
        """Why a CONNECT of `session` is refused (None: it is let in), in words for the log;
        the reason never includes the password."""
        rules = self.current
        if not session.username:
            return "anonymous"
        if rules.verify(session.username, session.password) is None:
            return "unknown user, revoked, or wrong password"
        if session.will_flag and not rules.may_publish(session.username, session.will_topic or ""):
            return f"its will's topic {session.will_topic!r} is not its to publish"
        return None

    def log_refusal(self, session: Session, reason: str) -> None:
        """One warning per user name (bounded), not one per attempt of a client retrying."""
        if self._first(f"connect {session.username or ''}"):
            _log.warning("embedded broker refused client %r (user %r): %s", session.client_id, session.username,
                         reason)

    def log_denied(self, username: str, action: str, topic: str) -> None:
        """One warning per user, action and topic (bounded), not one per message."""
        if self._first(f"{action} {username} {topic}"):
            _log.warning("embedded broker: %s may not %s %r", username, action, topic)

    def _first(self, key: str) -> bool:
        if key in self._refused:
            return False
        if len(self._refused) < _REFUSALS_LOGGED:
            self._refused.add(key)
        return True


class IdentityAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]
    """amqtt authentication plugin: a client is let in only with the password of an active
    identity, and a will only on a topic that identity may publish to."""

    @dataclass
    class Config:
        access: Any = None

    async def authenticate(self, *, session: Session) -> bool:
        holder: AccessHolder = self.config.access
        return holder.refusal(session) is None


class IdentityTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """amqtt topic plugin: publish, subscribe and receive as `eslserver.mqtt_access.RULES` allow
    the client's identity. A subscription is allowed only when every topic it can match is
    allowed (``gateway/+/jobs`` is refused to a gateway that may read only its own jobs)."""

    @dataclass
    class Config:
        access: Any = None

    async def topic_filtering(self, *, session: Session | None = None, topic: str | None = None,
                              action: Action | None = None) -> bool:
        holder: AccessHolder = self.config.access
        username = session.username if session is not None else None
        if topic is None or username is None:
            return False
        rules = holder.current
        if action == Action.PUBLISH:
            allowed = rules.may_publish(username, topic)
        elif action == Action.SUBSCRIBE:
            allowed = rules.may_subscribe(username, topic)
        elif action == Action.RECEIVE:
            allowed = rules.may_receive(username, topic)
        else:
            allowed = False
        if not allowed and action != Action.RECEIVE:
            holder.log_denied(username, str(action), topic)
        return allowed


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


class _FixedHandler(BrokerProtocolHandler):  # type: ignore[misc]
    """One client connection: outgoing QoS 1/2 messages stay in flight until acknowledged (fix 2),
    redeliveries do not block the session, and a silent client is dropped (fix 3)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stopping = False
        self._redeliveries: set[asyncio.Task[None]] = set()

    async def _retry_deliveries(self) -> None:
        session = self.session
        for message in [*session.inflight_in.values(), *session.inflight_out.values()]:
            task = asyncio.create_task(self._redeliver(message),
                                       name=f"amqtt redelivery {session.client_id}#{message.packet_id}")
            self._redeliveries.add(task)
            task.add_done_callback(self._redeliveries.discard)

    async def _redeliver(self, message: Any) -> None:
        try:
            await self._handle_message_flow(message)
        except Exception as exc:  # a broken connection: the message stays in flight for the next one
            _log.warning("amqtt: redelivering message %s to %s failed: %r", message.packet_id,
                         self.session.client_id if self.session else "?", exc)

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._redeliveries)
        for task in tasks:
            task.cancel()
        await super().stop()
        if tasks and asyncio.current_task() not in tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def handle_read_timeout(self) -> None:
        # nothing from the client for 1.5 x its keepalive: end the connection as a network failure
        self.drop()

    def drop(self) -> None:
        """End this connection as a network failure would (the broker's client loop closes it)."""
        waiter = self._disconnect_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _await_ack(self, waiters: dict[int, asyncio.Future[Any]], packet_id: int, packet: Any) -> Any:
        """Send `packet` and wait for its acknowledgement, without a deadline: if the connection
        ends first, the waiter is cancelled and the message stays in the session's flight table."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiters[packet_id] = waiter  # before sending: the answer may come back at once
        try:
            await self._send_packet(packet)
            return await waiter
        finally:
            if waiters.get(packet_id) is waiter:
                del waiters[packet_id]

    def _keep_in_flight(self, app_message: Any) -> bool:
        """Record an outgoing message in the session until it is acknowledged, whatever happens to
        this connection; False if the connection is ending (the next one sends it)."""
        self.session.inflight_out[app_message.packet_id] = app_message
        return not self._stopping

    def _publish_packet(self, app_message: Any) -> Any:
        app_message.publish_packet = app_message.build_publish_packet(dup=app_message.publish_packet is not None)
        return app_message.publish_packet

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        if app_message.direction != OUTGOING:
            await super()._handle_qos1_message_flow(app_message)
            return
        if not self._keep_in_flight(app_message):
            return
        app_message.puback_packet = await self._await_ack(self._puback_waiters, app_message.packet_id,
                                                          self._publish_packet(app_message))
        self.session.inflight_out.pop(app_message.packet_id, None)

    async def _handle_qos2_message_flow(self, app_message: Any) -> None:
        if app_message.direction != OUTGOING:
            await super()._handle_qos2_message_flow(app_message)
            return
        if not self._keep_in_flight(app_message):
            return
        if app_message.pubrec_packet is None:  # else PUBREC came before the connection ended: resend PUBREL
            app_message.pubrec_packet = await self._await_ack(self._pubrec_waiters, app_message.packet_id,
                                                              self._publish_packet(app_message))
        app_message.pubrel_packet = PubrelPacket.build(app_message.packet_id)
        app_message.pubcomp_packet = await self._await_ack(self._pubcomp_waiters, app_message.packet_id,
                                                           app_message.pubrel_packet)
        self.session.inflight_out.pop(app_message.packet_id, None)


class _FixedBroker(Broker):  # type: ignore[misc]
    """amqtt's broker with fixes 1, 3 (keepalive grace), 4 and 5, and `_FixedHandler` per connection."""

    access: AccessHolder | None = None
    """The access rules, when the broker enforces them (`fixed_amqtt_broker`)."""

    async def _initialize_client_session(self, *args: Any, **kwargs: Any) -> tuple[Any, Session]:
        if self.access is None:
            handler, session = await super()._initialize_client_session(*args, **kwargs)
        else:
            handler, session = await self._checked_client_session(*args, **kwargs)
        # amqtt makes a bare BrokerProtocolHandler (no session attached yet); ours instead
        fixed = _FixedHandler(self.plugins_manager, loop=self._loop)
        del handler
        if session.keep_alive > 0:
            session.keep_alive = session.keep_alive * _KEEPALIVE_GRACE
        return fixed, session

    async def _checked_client_session(self, reader: Any, writer: Any, remote_address: str,
                                      remote_port: int) -> tuple[Any, Session]:
        """amqtt 0.12.1's `_initialize_client_session`, with the CONNECT refused (CONNACK 5)
        before it touches any session when `refusal` says so (fix 5)."""
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except (AMQTTError, MQTTError, NoDataError) as exc:
            with contextlib.suppress(Exception):
                await writer.close()
            raise AMQTTError(f"{remote_address}:{remote_port}: no valid CONNECT: {exc}") from exc
        assert self.access is not None
        reason = self.access.refusal(session)
        existing = self._sessions.get(session.client_id) if session.client_id else None
        if reason is None and existing is not None and existing[0].username != session.username:
            reason = f"client id {session.client_id!r} belongs to another user's session"
        if reason is not None:
            self.access.log_refusal(session, reason)
            with contextlib.suppress(Exception):
                await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
                await writer.close()
            raise MQTTError(f"client {session.client_id!r} refused: {reason}")
        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif existing is not None:
            # the new connection brings its own will and keepalive (and the same user)
            old = existing[0]
            old.will_flag, old.will_message = session.will_flag, session.will_message
            old.will_topic, old.will_qos, old.keep_alive = session.will_topic, session.will_qos, session.keep_alive
            old.username, old.password = session.username, session.password
            session = old
            session.parent = 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

    async def enforce_access(self) -> int:
        """Drop every connection, and forget every session, whose user the current rules no
        longer let in (revoked, or its password changed); returns how many."""
        if self.access is None:
            return 0
        rules = self.access.current
        dropped = []
        for client_id, (session, handler) in list(self._sessions.items()):
            if rules.verify(session.username, session.password) is not None:
                continue
            session.will_flag = False  # an identity no longer trusted leaves no last word
            if session.transitions.is_connected() and isinstance(handler, _FixedHandler):
                handler.drop()
            dropped.append((client_id, session))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DROP_WAIT_S
        while any(s.transitions.is_connected() for _, s in dropped) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for client_id, session in dropped:
            if self._sessions.get(client_id, (None,))[0] is session:
                await self._delete_session(client_id)
            _log.warning("embedded broker: dropped client %r (user %r): no longer allowed in", client_id,
                         session.username)
        return len(dropped)

    async def _handle_subscription(self, *args: Any, **kwargs: Any) -> None:
        token = _in_subscribe.set(True)
        try:
            await super()._handle_subscription(*args, **kwargs)
        finally:
            _in_subscribe.reset(token)

    async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                          session: Session) -> None:
        if not _in_subscribe.get():
            return  # amqtt's CONNECT path: every client's filters, not this client's (fix 1)
        handler = self._get_handler(session)
        if handler is None:
            return
        topic_filter, qos = subscription
        for topic, retained in list(self._retained_messages.items()):
            if self._matches(topic, topic_filter):
                self._send_later(handler.mqtt_publish(topic, retained.data, min(qos, retained.qos or 0), retain=True))

    async def _publish_session_retained_messages(self, session: Session) -> None:
        handler = self._get_handler(session)
        if handler is None:
            return
        while not session.retained_messages.empty():  # queued while the session was away
            queued = session.retained_messages.get_nowait()
            self._send_later(handler.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False))

    def _send_later(self, publish: Coroutine[Any, Any, Any]) -> None:
        # the broadcast loop owns these tasks: it reaps them and cancels them on shutdown
        self._tasks_queue.append(asyncio.ensure_future(publish))


def fixed_amqtt_broker(config: dict[str, Any], access: AccessHolder | None = None) -> Broker:
    """A (not yet started) amqtt broker with the fixes above; refuses an amqtt they were not
    written for, since they override amqtt internals. With `access`, every client needs an
    identity's password and gets only its own topics (`IdentityAuthPlugin`,
    `IdentityTopicPlugin`); without, every client is let in (`OpenAuthPlugin`)."""
    if amqtt.__version__ != AMQTT_VERSION:
        raise RuntimeError(f"amqtt {amqtt.__version__} is installed, the embedded broker needs amqtt=={AMQTT_VERSION} "
                           f"(or set embedded_broker = \"mosquitto\" with Mosquitto installed)")
    config = dict(config)
    if access is None:
        config["plugins"] = {f"{__name__}.OpenAuthPlugin": {}}
    else:
        config["plugins"] = {f"{__name__}.IdentityAuthPlugin": {"access": access},
                             f"{__name__}.IdentityTopicPlugin": {"access": access}}
    broker = _FixedBroker(config)
    broker.access = access
    return broker


async def enforce_access(broker: Broker) -> int:
    """`_FixedBroker.enforce_access` of a broker made by `fixed_amqtt_broker`."""
    assert isinstance(broker, _FixedBroker)
    return await broker.enforce_access()
