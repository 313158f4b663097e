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

Known and left alone: amqtt delivers at the subscription's QoS rather than min(publish,
subscription), which only ever upgrades a delivery.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Coroutine
from typing import Any

import amqtt  # type: ignore[import-untyped]
from amqtt.broker import Broker  # type: ignore[import-untyped]
from amqtt.contexts import BaseContext  # type: ignore[import-untyped]
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler  # type: ignore[import-untyped]
from amqtt.mqtt.pubrel import PubrelPacket  # type: ignore[import-untyped]
from amqtt.plugins.base import BaseAuthPlugin  # type: ignore[import-untyped]
from amqtt.session import OUTGOING, Session  # type: ignore[import-untyped]

__all__ = ["AMQTT_VERSION", "OpenAuthPlugin", "fixed_amqtt_broker"]

AMQTT_VERSION = "0.12.1"
"""The amqtt release the fixes below were written against (and pyproject.toml pins)."""

_log = logging.getLogger(__name__)

_KEEPALIVE_GRACE = 1.5  # [MQTT-3.1.2-24]: close after 1.5 x the keepalive without a packet
_in_subscribe: contextvars.ContextVar[bool] = contextvars.ContextVar("esl_amqtt_in_subscribe", default=False)


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
    """amqtt's broker with fixes 1, 3 (keepalive grace) and 4, and `_FixedHandler` per connection."""

    async def _initialize_client_session(self, *args: Any, **kwargs: Any) -> tuple[Any, Session]:
        handler, session = await super()._initialize_client_session(*args, **kwargs)
        # amqtt makes a bare BrokerProtocolHandler (no session attached yet); ours instead
        fixed = _FixedHandler(self.plugins_manager, loop=self._loop)
        del handler
        if session.keep_alive > 0:
            session.keep_alive = session.keep_alive * _KEEPALIVE_GRACE
        return fixed, session

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


def fixed_amqtt_broker(config: dict[str, Any]) -> Broker:
    """A (not yet started) amqtt broker with the fixes above; refuses an amqtt they were not
    written for, since they override amqtt internals."""
    if amqtt.__version__ != AMQTT_VERSION:
        raise RuntimeError(f"amqtt {amqtt.__version__} is installed, the embedded broker needs amqtt=={AMQTT_VERSION} "
                           f"(or set embedded_broker = \"mosquitto\" with Mosquitto installed)")
    return _FixedBroker(config)
