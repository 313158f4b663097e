"""The MQTT topics of a store, built and parsed in one place.

Every topic the server, the gateway, the demo and the tools publish or subscribe to is
``{prefix}/{store}/…`` (the contract is ``docs/mqtt.asyncapi.yaml``):

========================  =============================================
`Kind`                    topic
========================  =============================================
``POS_PRICES``            ``{prefix}/{store}/pos/prices``
``POS_ERRORS``            ``{prefix}/{store}/pos/errors``
``POS_ACKS``              ``{prefix}/{store}/pos/acks``
``POS_STOCK``             ``{prefix}/{store}/pos/stock``
``PICKS``                 ``{prefix}/{store}/picks``
``GATEWAY_JOBS``          ``{prefix}/{store}/gateway/{gateway}/jobs``
``GATEWAY_EVENTS``        ``{prefix}/{store}/gateway/{gateway}/events``
``GATEWAY_STATUS``        ``{prefix}/{store}/gateway/{gateway}/status``
``LABEL_STATE``           ``{prefix}/{store}/label/{mac}/state``
========================  =============================================

``POS_STOCK`` and ``PICKS`` are in the contract and in the brokers' access rules
(`eslserver.mqtt_access`) but nothing reads them yet.

`Topics` (one store's prefix and id) builds them, and the subscription filters with ``+`` in
the gateway or label level; `Topic` is one topic as a typed value, and `Topic.parse` turns an
incoming topic back into it, so no caller picks levels out with ``split("/")``. Every level is
checked: a part that is empty or holds ``/``, ``+``, ``#`` or NUL would make another topic (or
a filter) than the one meant, so it raises `TopicError` naming the part, and a topic that is
not one of ours raises `TopicError` naming the topic.

Only the standard library is used: the gateway's small install imports this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Final

__all__ = ["Kind", "Topic", "TopicError", "Topics", "check_level"]

_BAD_CHARS: Final = frozenset("/+#\x00")
_WILDCARD: Final = "+"


class TopicError(ValueError):
    """A topic, or a part of one, that is not a valid topic of ours; names it and the value."""


def check_level(name: str, value: object) -> str:
    """`value` if it can be one MQTT topic level (non-empty, no ``/``, ``+``, ``#`` or NUL),
    else `TopicError` naming `name` and the value."""
    if not isinstance(value, str) or not value or _BAD_CHARS & set(value):
        raise TopicError(f"{name} must be a non-empty MQTT topic level (no '+', '#', '/'), got {value!r}")
    return value


class Kind(Enum):
    """What a topic carries. The value is the topic's levels after ``{prefix}/{store}``, with
    ``{gateway}`` or ``{mac}`` where that part of the topic names one."""

    POS_PRICES = "pos/prices"
    POS_ERRORS = "pos/errors"
    POS_ACKS = "pos/acks"
    POS_STOCK = "pos/stock"
    PICKS = "picks"
    GATEWAY_JOBS = "gateway/{gateway}/jobs"
    GATEWAY_EVENTS = "gateway/{gateway}/events"
    GATEWAY_STATUS = "gateway/{gateway}/status"
    LABEL_STATE = "label/{mac}/state"

    @property
    def slot(self) -> str | None:
        """``gateway`` or ``mac``: the part this kind of topic names, if any."""
        return _SLOTS[self]


_SLOT_NAMES: Final = ("gateway", "mac")


def _slot_of(kind: Kind) -> str | None:
    found = [name for name in _SLOT_NAMES if f"{{{name}}}" in kind.value]
    assert len(found) <= 1, kind
    return found[0] if found else None


_SLOTS: Final[Mapping[Kind, str | None]] = MappingProxyType({kind: _slot_of(kind) for kind in Kind})
_SHAPES: Final[Mapping[Kind, tuple[str, ...]]] = MappingProxyType({
    kind: tuple(_WILDCARD if level.startswith("{") else level for level in kind.value.split("/")) for kind in Kind})
"""Derived from `Kind`: the levels after the store, ``+`` at the slot (what `Topic.parse` matches)."""
assert len(set(_SHAPES.values())) == len(Kind), "two kinds share a shape"


def _match(levels: list[str]) -> tuple[Kind, str | None] | None:
    """The kind whose shape `levels` (after the store) has, and the level at its slot."""
    for kind, shape in _SHAPES.items():
        if len(shape) == len(levels) and all(s in (_WILDCARD, level) for s, level in zip(shape, levels)):
            return kind, (levels[shape.index(_WILDCARD)] if kind.slot is not None else None)
    return None


@dataclass(frozen=True, slots=True)
class Topic:
    """One topic of ours as a value: ``str(topic)`` is the topic, `Topic.parse` its inverse.

    ``gateway`` is set exactly for the gateway kinds and ``mac`` exactly for `Kind.LABEL_STATE`;
    every part is one valid topic level (else `TopicError`).
    """

    kind: Kind
    prefix: str
    store: str
    gateway: str | None = None
    mac: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Kind):
            raise TopicError(f"kind must be a Kind, got {self.kind!r}")
        check_level("prefix", self.prefix)
        check_level("store", self.store)
        for name in _SLOT_NAMES:
            value = getattr(self, name)
            if name == self.kind.slot:
                check_level(name, value)
            elif value is not None:
                raise TopicError(f"{name} must be None for a {self.kind.name} topic, got {value!r}")

    def __str__(self) -> str:
        return _build(self.kind, self.prefix, self.store, self.gateway or self.mac)

    @classmethod
    def parse(cls, topic: str) -> Topic:
        """The `Topic` that `topic` is; `TopicError` naming `topic` when it is none of ours."""
        if not isinstance(topic, str):
            raise TopicError(f"topic must be text, got {topic!r}")
        levels = topic.split("/")
        if len(levels) < 3:
            raise TopicError(f"topic {topic!r} is not {{prefix}}/{{store}}/…: too few levels")
        prefix, store = levels[0], levels[1]
        found = _match(levels[2:])
        if found is None:
            raise TopicError(f"topic {topic!r} is none of ours: expected {prefix}/{store}/ then "
                             f"{' or '.join(k.value for k in Kind)}")
        kind, part = found
        try:
            return cls(kind, prefix, store, *_slot_values(kind, part))
        except TopicError as exc:
            raise TopicError(f"topic {topic!r}: {exc}") from None


def _slot_values(kind: Kind, part: str | None) -> tuple[str | None, str | None]:
    """(gateway, mac) of a `kind` topic whose slot level is `part`."""
    return (part if kind.slot == "gateway" else None), (part if kind.slot == "mac" else None)


def _build(kind: Kind, prefix: str, store: str, part: str | None) -> str:
    tail = kind.value
    if kind.slot is not None:
        assert part is not None
        tail = tail.replace(f"{{{kind.slot}}}", part)
    return f"{prefix}/{store}/{tail}"


@dataclass(frozen=True, slots=True)
class Topics:
    """The topics of one store (``prefix``, ``store``), checked once; builds and parses them."""

    prefix: str
    store: str

    def __post_init__(self) -> None:
        check_level("prefix", self.prefix)
        check_level("store", self.store)

    def topic(self, kind: Kind, part: str | None = None) -> Topic:
        """The `Topic` of `kind`; `part` is the gateway or MAC for kinds that name one."""
        if kind.slot is None and part is not None:
            raise TopicError(f"a {kind.name} topic names no gateway or label, got {part!r}")
        return Topic(kind, self.prefix, self.store, *_slot_values(kind, part))

    @property
    def pos_prices(self) -> str:
        return str(self.topic(Kind.POS_PRICES))

    @property
    def pos_errors(self) -> str:
        return str(self.topic(Kind.POS_ERRORS))

    @property
    def pos_acks(self) -> str:
        return str(self.topic(Kind.POS_ACKS))

    @property
    def pos_stock(self) -> str:
        return str(self.topic(Kind.POS_STOCK))

    @property
    def picks(self) -> str:
        return str(self.topic(Kind.PICKS))

    def gateway_jobs(self, gateway: str) -> str:
        return str(self.topic(Kind.GATEWAY_JOBS, gateway))

    def gateway_events(self, gateway: str) -> str:
        return str(self.topic(Kind.GATEWAY_EVENTS, gateway))

    def gateway_status(self, gateway: str) -> str:
        return str(self.topic(Kind.GATEWAY_STATUS, gateway))

    def label_state(self, mac: str) -> str:
        return str(self.topic(Kind.LABEL_STATE, mac))

    def filter(self, kind: Kind) -> str:
        """The subscription filter for every topic of `kind` in this store: ``+`` for the
        gateway or label (the topic itself for kinds that name neither)."""
        return _build(kind, self.prefix, self.store, _WILDCARD)

    def every_store(self, kind: Kind) -> str:
        """The subscription filter for every topic of `kind` in every store under this prefix
        (``esl/+/pos/prices``, ``esl/+/gateway/+/events``): what a server serving a chain takes."""
        return _build(kind, self.prefix, _WILDCARD, _WILDCARD)

    def parse(self, topic: str) -> Topic:
        """`Topic.parse`, refusing (`TopicError`) a topic of another prefix or store."""
        parsed = Topic.parse(topic)
        if (parsed.prefix, parsed.store) != (self.prefix, self.store):
            raise TopicError(f"topic {topic!r} is not under {self.prefix}/{self.store}/")
        return parsed
