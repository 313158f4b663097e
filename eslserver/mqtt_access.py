"""Who may publish and subscribe to which MQTT topic: one table (`RULES`) for every broker.

Every client of the broker has its own identity (`Identity`), named so that the name says what
it is: ``server/INSTANCE``, ``gateway/STORE/ID``, ``pos/STORE/NAME`` (a till) and
``integration/STORE/NAME`` (an e-commerce shop, an ERP, Home Assistant). Its role decides what
it may do, as `RULES` says, with the topics built by `eslserver.topics` (never written out here):

=============  ===============================================  =====================================
role           publishes                                        subscribes to
=============  ===============================================  =====================================
server         everything under the prefix, ``homeassistant/#``  the same
gateway        its own ``gateway/{id}/events`` and ``status``     its own ``gateway/{id}/jobs``
               (its will is its status)
pos            its store's ``pos/prices`` and ``pos/stock``       its store's ``pos/errors``, ``pos/acks``
integration    its store's ``picks`` and ``pos/stock``            its store's ``label/+/state``, and
                                                                ``homeassistant/#`` (discovery)
=============  ===============================================  =====================================

`AccessSnapshot` is the table applied to the identities of one moment (the broker's view): it
checks a password (`eslserver.mqtt_passwords`), answers "may this user publish / subscribe to /
receive this topic" for the embedded amqtt broker, and writes Mosquitto's ``password_file`` and
``acl_file`` (the embedded Mosquitto, and ``esl broker-config`` for a store's own Mosquitto).
Anything not granted is refused: an anonymous client, an unknown user, a revoked one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Final

from eslserver.mqtt_passwords import PasswordHashError, check_hash, verify_password
from eslserver.topics import Kind, Topics, check_level

__all__ = ["HOME_ASSISTANT_PREFIX", "RULES", "Access", "AccessSnapshot", "Grant", "Identity", "IdentityError",
           "Role", "Scope", "Tree", "covers", "matches"]

HOME_ASSISTANT_PREFIX: Final = "homeassistant"
"""Home Assistant's MQTT discovery prefix (its default): ``homeassistant/<component>/<id>/config``."""

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class IdentityError(ValueError):
    """An identity, user name or part of one that is not valid; names the part and the value."""


class Role(Enum):
    """What kind of client an identity is (the first level of its user name)."""

    SERVER = "server"
    GATEWAY = "gateway"
    POS = "pos"
    INTEGRATION = "integration"


class Access(Enum):
    """What a grant allows: publishing to a topic, or subscribing to (and receiving) it."""

    PUBLISH = "publish"
    SUBSCRIBE = "subscribe"


class Scope(Enum):
    """Whose topic a grant on a kind with a gateway or label level means."""

    OWN = "own"
    """The identity's own gateway id in the gateway level (gateways only)."""
    ANY = "any"
    """Every gateway or label of the store (``+``)."""


class Tree(Enum):
    """Grants beyond one kind of topic: a whole tree."""

    PREFIX = "{prefix}/#"
    """Everything under the topic prefix, every store (the server)."""
    HOME_ASSISTANT = f"{HOME_ASSISTANT_PREFIX}/#"
    """Home Assistant's discovery topics."""


_BOTH: Final = frozenset({Access.PUBLISH, Access.SUBSCRIBE})
_PUB: Final = frozenset({Access.PUBLISH})
_SUB: Final = frozenset({Access.SUBSCRIBE})


@dataclass(frozen=True, slots=True)
class Grant:
    """One line of the table: `topic` (a kind of topic of the identity's store, or a `Tree`)
    with `access`; `scope` for kinds with a gateway or label level, None otherwise."""

    topic: Kind | Tree
    access: frozenset[Access]
    scope: Scope | None = None


RULES: Final[Mapping[Role, tuple[Grant, ...]]] = MappingProxyType({
    Role.SERVER: (Grant(Tree.PREFIX, _BOTH), Grant(Tree.HOME_ASSISTANT, _BOTH)),
    Role.GATEWAY: (Grant(Kind.GATEWAY_JOBS, _SUB, Scope.OWN), Grant(Kind.GATEWAY_EVENTS, _PUB, Scope.OWN),
                   Grant(Kind.GATEWAY_STATUS, _PUB, Scope.OWN)),
    Role.POS: (Grant(Kind.POS_PRICES, _PUB), Grant(Kind.POS_STOCK, _PUB), Grant(Kind.POS_ERRORS, _SUB),
               Grant(Kind.POS_ACKS, _SUB)),
    Role.INTEGRATION: (Grant(Kind.PICKS, _PUB), Grant(Kind.POS_STOCK, _PUB),
                       Grant(Kind.LABEL_STATE, _SUB, Scope.ANY), Grant(Tree.HOME_ASSISTANT, _SUB)),
})
"""What each role may do. The only place access rules are written."""


def _check_rules() -> None:
    """The table is well formed: every role has grants, a scope exactly where a kind names a
    gateway or label, and `Scope.OWN` only for a gateway's own gateway topics."""
    assert set(RULES) == set(Role), "every role needs its line"
    for role, grants in RULES.items():
        assert grants, role
        for grant in grants:
            assert grant.access and grant.access <= _BOTH, grant
            if isinstance(grant.topic, Tree):
                assert grant.scope is None, grant
                continue
            assert (grant.scope is None) == (grant.topic.slot is None), grant
            if grant.scope is Scope.OWN:
                assert role is Role.GATEWAY and grant.topic.slot == "gateway", grant


_check_rules()


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise IdentityError(f"{what} must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or "
                            f"digit), got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Identity:
    """One MQTT client identity. `username` is derived: ``server/NAME`` for the server (no
    store), ``ROLE/STORE/NAME`` otherwise, where NAME is a gateway's id, a till's or an
    integration's name. Every part is a plain name, so a user name never holds ``:`` (the
    separator of Mosquitto's password file), a blank or an MQTT wildcard."""

    role: Role
    name: str
    store: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            raise IdentityError(f"role must be one of {', '.join(r.value for r in Role)}, got {self.role!r}")
        _check_name("name" if self.role is not Role.GATEWAY else "gateway id", self.name)
        if self.role is Role.SERVER:
            if self.store is not None:
                raise IdentityError(f"a server identity has no store, got {self.store!r}")
        else:
            _check_name("store", self.store)
            check_level("store", self.store)

    @property
    def username(self) -> str:
        return "/".join(p for p in (self.role.value, self.store, self.name) if p is not None)

    @classmethod
    def parse(cls, username: str) -> Identity:
        """The identity a user name names; `IdentityError` naming it otherwise."""
        parts = username.split("/") if isinstance(username, str) else []
        try:
            role = Role(parts[0]) if parts else None
        except ValueError:
            role = None
        expected = 2 if role is Role.SERVER else 3
        if role is None or len(parts) != expected:
            raise IdentityError(f"user name {username!r} is not server/INSTANCE, gateway/STORE/ID, pos/STORE/NAME "
                                f"or integration/STORE/NAME")
        if role is Role.SERVER:
            return cls(role, parts[1])
        return cls(role, parts[2], parts[1])

    def filters(self, prefix: str) -> Mapping[Access, tuple[str, ...]]:
        """The topic filters this identity may publish to and subscribe to under `prefix`."""
        out: dict[Access, list[str]] = {Access.PUBLISH: [], Access.SUBSCRIBE: []}
        topics = Topics(prefix, self.store) if self.store is not None else None
        for grant in RULES[self.role]:
            if grant.topic is Tree.PREFIX:
                check_level("prefix", prefix)
                text = Tree.PREFIX.value.format(prefix=prefix)
            elif isinstance(grant.topic, Tree):
                text = grant.topic.value
            else:
                assert topics is not None, self  # only the server has no store, and no kind grants
                if grant.scope is Scope.ANY:
                    text = topics.filter(grant.topic)
                else:
                    text = str(topics.topic(grant.topic, self.name if grant.scope is Scope.OWN else None))
            for access in grant.access:
                out[access].append(text)
        return MappingProxyType({access: tuple(texts) for access, texts in out.items()})


# -- topic filters --------------------------------------------------------------------------------
def _strip_share(topic_filter: str) -> str:
    """A shared subscription's filter (``$share/GROUP/FILTER``) is FILTER for access."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else ""
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` (no wildcards) matches `topic_filter`, as MQTT 3.1.1 section 4.7 says
    (``#`` also matches its parent level; wildcards at the first level never match ``$`` topics)."""
    if not topic or "+" in topic or "#" in topic:
        return False
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want, got = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return i == len(want) - 1
        if i >= len(got) or (level != "+" and level != got[i]):
            return False
    return len(want) == len(got)


def covers(allowed: str, requested: str) -> bool:
    """Whether every topic the filter `requested` can match is matched by `allowed`: a client
    may subscribe to `requested` only then (``gateway/+/jobs`` is not covered by ``gateway/gw1/jobs``)."""
    want, got = allowed.split("/"), requested.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return i == len(want) - 1
        if i >= len(got):
            return False
        if level == "+":
            if got[i] == "#":
                return False
            continue
        if got[i] != level:
            return False
    return len(want) == len(got)


@dataclass(frozen=True, slots=True)
class _User:
    identity: Identity
    password_hash: str = field(repr=False)
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


class AccessSnapshot:
    """The access rules applied to a set of active identities, under one topic prefix.

    Immutable; two snapshots are equal when they hold the same identities with the same
    password hashes (the server compares them to know when the broker must be told)."""

    def __init__(self, prefix: str, identities: Iterable[tuple[Identity, str]]) -> None:
        check_level("prefix", prefix)
        self.prefix = prefix
        users: dict[str, _User] = {}
        for identity, password_hash in identities:
            try:
                check_hash(password_hash)
            except PasswordHashError as exc:
                raise IdentityError(f"{identity.username}: {exc}") from None
            if identity.username in users:
                raise IdentityError(f"user name {identity.username!r} is given twice")
            filters = identity.filters(prefix)
            users[identity.username] = _User(identity, password_hash, filters[Access.PUBLISH],
                                             filters[Access.SUBSCRIBE])
        self._users: Mapping[str, _User] = MappingProxyType(dict(sorted(users.items())))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AccessSnapshot):
            return NotImplemented
        return self.prefix == other.prefix and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((self.prefix, self._key()))

    def _key(self) -> tuple[tuple[str, str], ...]:
        return tuple((name, user.password_hash) for name, user in self._users.items())

    def __len__(self) -> int:
        return len(self._users)

    def __repr__(self) -> str:
        return f"AccessSnapshot({self.prefix!r}, {len(self._users)} identities)"

    @property
    def usernames(self) -> tuple[str, ...]:
        return tuple(self._users)

    def identity(self, username: str | None) -> Identity | None:
        user = self._users.get(username or "")
        return None if user is None else user.identity

    def is_gateway(self, store: str, gateway: str) -> bool:
        """Whether `gateway` of `store` has an active identity (is registered)."""
        return f"{Role.GATEWAY.value}/{store}/{gateway}" in self._users

    def verify(self, username: str | None, password: str | bytes | None) -> Identity | None:
        """The identity `username` names if `password` is its password; None otherwise
        (anonymous, unknown, revoked or a wrong password)."""
        user = self._users.get(username or "")
        if user is None:
            return None
        if isinstance(password, bytes):
            try:
                password = password.decode("utf-8")
            except UnicodeDecodeError:
                return None
        return user.identity if verify_password(password, user.password_hash) else None

    def may_publish(self, username: str | None, topic: str) -> bool:
        user = self._users.get(username or "")
        return user is not None and any(matches(f, topic) for f in user.publish)

    def may_subscribe(self, username: str | None, topic_filter: str) -> bool:
        user = self._users.get(username or "")
        requested = _strip_share(topic_filter)
        return user is not None and bool(requested) and any(covers(f, requested) for f in user.subscribe)

    def may_receive(self, username: str | None, topic: str) -> bool:
        user = self._users.get(username or "")
        return user is not None and any(matches(f, topic) for f in user.subscribe)

    # -- Mosquitto's files -------------------------------------------------------------------------
    def password_file(self, header: str = "") -> str:
        """Mosquitto's ``password_file``: ``user:hash`` per active identity."""
        return _comment(header) + "".join(f"{name}:{user.password_hash}\n" for name, user in self._users.items())

    def acl_file(self, header: str = "") -> str:
        """Mosquitto's ``acl_file``: per identity, ``topic read`` for what it subscribes to and
        ``topic write`` for what it publishes (``readwrite`` when both). Nothing for anyone else."""
        blocks = []
        for name, user in self._users.items():
            lines = [f"user {name}"]
            for topic in dict.fromkeys([*user.publish, *user.subscribe]):
                mode = ("readwrite" if topic in user.publish and topic in user.subscribe
                        else "write" if topic in user.publish else "read")
                lines.append(f"topic {mode} {topic}")
            blocks.append("\n".join(lines) + "\n")
        return _comment(header) + "\n".join(blocks)


def _comment(header: str) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) + ("\n" if header else "")
