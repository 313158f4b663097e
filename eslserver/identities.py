"""MQTT identities: made, listed and revoked here; what the broker and the server know of them.

Every client of the broker has its own identity (`eslserver.mqtt_access.Identity`): the server,
each gateway (``esl gateways add STORE/ID``), each POS till and each integration (``esl
identities add``). Making one, or giving it a new password, returns `Credentials`: the password
exists only there, shown once; the database keeps its hash (`eslserver.mqtt_passwords`). Every
change is audited (target ``identity:USERNAME``) and committed before it is acted on.

Revoking a gateway's identity also takes the gateway out of the store in the same transaction:
it is marked offline and its jobs in flight go back to the queue, so another gateway delivers
them (none is lost); the broker drops it at once (`IdentityRegistry`, `eslserver.broker`).

The server's own identity (``server/INSTANCE``) has a password derived from the secret key
(`server_password`): every start and ``esl broker-config`` agree on it without storing it, and
the server connects with it to its embedded broker and, unless ``mqtt_username`` is set, to an
external one.

`IdentityRegistry` is the server's view: the `AccessSnapshot` of the active identities, read
again every second (``esl identities`` runs in another process) and at once after a change made
through it, handed to the embedded broker when it changes; and the registry of gateways, whose
events and status the server ignores unless the gateway is registered
(``gateway_registration = "required"``, the default).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from eslserver.audit import Who, record_audit
from eslserver.db.database import Connection, Database, Reader
from eslserver.mqtt import MqttSettings
from eslserver.mqtt_access import AccessSnapshot, Identity, IdentityError, Role
from eslserver.mqtt_passwords import hash_password, new_password, verify_password
from eslserver.store import gateways as gateway_rows
from eslserver.store import identities as identity_rows
from eslserver.store import jobs as job_rows
from eslserver.timeutil import iso, parse_iso, utcnow

if TYPE_CHECKING:
    from eslserver.config import Settings
    from eslserver.keyvault import KeyVault
    from eslserver.metrics import Metrics

__all__ = ["Credentials", "IdentityInfo", "IdentityRegistry", "UnknownIdentityError", "add_identity",
           "ensure_server_identity", "list_identities", "load_snapshot", "revoke_identity", "server_password"]

log = logging.getLogger(__name__)

QUIET_S: Final = 600.0
"""An ignored (unregistered) gateway heard again after this long is logged again."""
_REMEMBERED: Final = 10_000
_LEFT_OUT: set[str] = set()
"""User names of rows `load_snapshot` could not read, already warned about."""


class UnknownIdentityError(IdentityError):
    """No identity has this user name."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """An identity and its password: the only copy of the password (show it once)."""

    identity: Identity
    password: str = field(repr=False)

    @property
    def username(self) -> str:
        return self.identity.username

    def mqtt_settings(self, url: str, **overrides: Any) -> MqttSettings:
        """How to reach the broker at `url` as this identity."""
        return MqttSettings.from_url(url, username=self.username, password=self.password, **overrides)

    def apply(self, settings: MqttSettings) -> MqttSettings:
        """`settings` (broker, TLS) with this identity's user name and password."""
        return dataclasses.replace(settings, username=self.username, password=self.password)


@dataclass(frozen=True, slots=True)
class IdentityInfo:
    """One identity as listed (never its password or hash)."""

    username: str
    role: str
    store: str | None
    name: str
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> IdentityInfo:
        return cls(row["username"], row["role"], row["store"], row["name"], parse_iso(row["created_at"]),
                   parse_iso(row["updated_at"]), None if row["revoked_at"] is None else parse_iso(row["revoked_at"]))

    def to_json(self) -> dict[str, Any]:
        return {"username": self.username, "role": self.role, "store": self.store, "name": self.name,
                "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
                "revoked_at": None if self.revoked_at is None else iso(self.revoked_at)}


async def add_identity(db: Database, identity: Identity, actor: Who, *, reset: bool = False) -> Credentials:
    """Make `identity` with a new random password (or, with `reset`, give an active one a new
    password); a revoked identity of that name is reinstated with a new password. An active one
    without `reset` raises `IdentityError` naming it."""
    credentials = Credentials(identity, new_password())
    async with db.transaction() as conn:
        row = await identity_rows.get(conn, identity.username)
        if row is not None and row["revoked_at"] is None and not reset:
            raise IdentityError(f"identity {identity.username!r} exists already (created {row['created_at']}): "
                                "give it a new password with --reset, or revoke it first")
        await _set_password(conn, credentials, row, actor)
    log.info("MQTT identity %s %s", identity.username, "made" if row is None else "given a new password")
    return credentials


async def _set_password(conn: Connection, credentials: Credentials, row: Any, actor: Who) -> None:
    """Store the hash of `credentials`' password: a new identity when `row` (its current row)
    is None, else a new password (reinstating a revoked one). Audited."""
    identity, now = credentials.identity, iso(utcnow())
    hashed = hash_password(credentials.password)
    target = f"identity:{identity.username}"
    if row is None:
        await identity_rows.insert(conn, identity.username, identity.role.value, identity.store, identity.name,
                                   hashed, now)
        await record_audit(conn, actor, "identity.add", target, None,
                           {"role": identity.role.value, "store": identity.store, "name": identity.name})
        return
    await identity_rows.set_password(conn, identity.username, hashed, now)
    if row["revoked_at"] is not None:
        await identity_rows.reinstate(conn, identity.username)
    await record_audit(conn, actor, "identity.password", target, {"revoked_at": row["revoked_at"]},
                       {"revoked_at": None, "password_set_at": now})


async def revoke_identity(db: Database, username: str, actor: Who) -> IdentityInfo:
    """Revoke `username` (revoking twice keeps the first time). A gateway is marked offline, its
    registered public key is forgotten (no job is sealed to it again: it must be registered anew)
    and its jobs in flight are queued again for the store's other gateways, in the same transaction.
    `UnknownIdentityError` when no identity has this name; a server's own identity is not
    revoked (`IdentityError`): the server makes it again at its next start."""
    identity = Identity.parse(username)
    if identity.role is Role.SERVER:  # its password comes from the secret key: it would be back at the next start
        raise IdentityError(f"{username!r} is a server's own identity: it cannot be revoked (its password is "
                            "derived from the secret key; a new secret key changes it)")
    now = iso(utcnow())
    async with db.transaction() as conn:
        row = await identity_rows.get(conn, username)
        if row is None:
            raise UnknownIdentityError(f"username: no identity {username!r} (see 'esl identities list')")
        if row["revoked_at"] is None:
            await identity_rows.revoke(conn, username, now)
            requeued = 0
            if identity.role is Role.GATEWAY and identity.store is not None:
                requeued = await job_rows.count_sent_by(conn, identity.name, store=identity.store)
                await job_rows.requeue_sent_by(conn, identity.name, now, store=identity.store)
                await gateway_rows.forget_public_key(conn, identity.store, identity.name)  # nothing sealed to it again
                if await gateway_rows.status(conn, identity.store, identity.name) is not None:
                    await gateway_rows.set_status(conn, identity.store, identity.name, "offline", now=now, info=None)
            await record_audit(conn, actor, "identity.revoke", f"identity:{username}", {"revoked_at": None},
                               {"revoked_at": now, **({"jobs_requeued": requeued}
                                                      if identity.role is Role.GATEWAY else {})})
            log.info("MQTT identity %s revoked%s", username,
                     f"; {requeued} jobs in flight go back to the queue" if identity.role is Role.GATEWAY else "")
            row = await identity_rows.get(conn, username)
            assert row is not None
    return IdentityInfo.from_row(row)


async def list_identities(db: Database, *, include_revoked: bool = True) -> list[IdentityInfo]:
    return [IdentityInfo.from_row(r) for r in await identity_rows.listing(db, include_revoked=include_revoked)]


async def load_snapshot(conn: Reader, prefix: str) -> AccessSnapshot:
    """The access rules of every active identity (a row the rules cannot read is left out,
    with a warning: it can only be refused)."""
    entries = []
    for row in await identity_rows.active(conn):
        try:
            entry = (Identity.parse(row["username"]), row["password_hash"])
            AccessSnapshot(prefix, [entry])  # its names and its hash are well formed
        except IdentityError as exc:
            if row["username"] not in _LEFT_OUT and len(_LEFT_OUT) < _REMEMBERED:  # read every second: say it once
                _LEFT_OUT.add(row["username"])
                log.warning("MQTT identity %r is left out of the broker's rules: %s", row["username"], exc)
            continue
        entries.append(entry)
    return AccessSnapshot(prefix, entries)


def server_password(vault: KeyVault, instance: str) -> str:
    """The server instance's MQTT password, derived from the secret key (`KeyVault.derive`)."""
    identity = Identity(Role.SERVER, instance)
    return base64.urlsafe_b64encode(vault.derive(f"mqtt-password/{identity.username}")).decode().rstrip("=")


async def ensure_server_identity(db: Database, instance: str, password: str) -> Credentials:
    """The server's identity exists, is active and has `password` (made on the first start,
    its hash renewed when the secret key changed, e.g. a restore with another key)."""
    credentials = Credentials(Identity(Role.SERVER, instance), password)
    row = await identity_rows.get(db, credentials.username)
    if row is not None and row["revoked_at"] is None and verify_password(password, row["password_hash"]):
        return credentials
    async with db.transaction() as conn:
        row = await identity_rows.get(conn, credentials.username)
        await _set_password(conn, credentials, row, _Server(credentials.username))
    log.info("MQTT identity %s of this server %s", credentials.username, "made" if row is None else "renewed")
    return credentials


@dataclass(frozen=True, slots=True)
class _Server:
    """The server itself as the author of an audit row."""

    name: str
    role: str = "admin"


class IdentityRegistry:
    """The server's identities: the access rules its broker enforces, and its registered gateways.

    `refresh` reads the active identities again and, when they changed, calls `on_change` with
    the new snapshot and the gateways of this store that are no longer registered. `allows`
    says whether the server listens to a gateway; an ignored one is logged once, and again only
    when heard after `QUIET_S` of silence.
    """

    def __init__(self, db: Database, settings: Settings, metrics: Metrics | None = None, *,
                 on_change: Callable[[AccessSnapshot, set[str]], Awaitable[None]] | None = None) -> None:
        self.db = db
        self.settings = settings
        self.metrics = metrics
        self.on_change = on_change
        self.snapshot = AccessSnapshot(settings.topic_prefix, [])
        self._ignored: dict[str, float] = {}
        self._refreshing = asyncio.Lock()

    async def refresh(self) -> bool:
        """Read the identities again; True (after `on_change`) when they changed. One refresh
        at a time: a slow one must not put back rules older than a later one applied."""
        async with self._refreshing:
            snapshot = await load_snapshot(self.db, self.settings.topic_prefix)
            if snapshot == self.snapshot:
                return False
            store = self.settings.store
            gone = {name for name in self._gateways(self.snapshot) if not snapshot.is_gateway(store, name)}
            self.snapshot = snapshot
            if self.on_change is not None:
                await self.on_change(snapshot, gone)
            return True

    def unregistered(self, gateways: list[str], *, store: str | None = None) -> list[str]:
        """Those of `gateways` (of `store`, default the configured one) the server does not listen to."""
        if self.settings.gateway_registration == "open":
            return []
        return [g for g in gateways if not self.snapshot.is_gateway(store or self.settings.store, g)]

    def _gateways(self, snapshot: AccessSnapshot) -> set[str]:
        out = set()
        for username in snapshot.usernames:
            identity = snapshot.identity(username)
            if identity is not None and identity.role is Role.GATEWAY and identity.store == self.settings.store:
                out.add(identity.name)
        return out

    async def add(self, identity: Identity, actor: Who, *, reset: bool = False) -> Credentials:
        """`add_identity`, then the broker is told at once."""
        credentials = await add_identity(self.db, identity, actor, reset=reset)
        await self.refresh()
        return credentials

    async def revoke(self, username: str, actor: Who) -> IdentityInfo:
        """`revoke_identity`, then the broker drops the identity at once."""
        info = await revoke_identity(self.db, username, actor)
        await self.refresh()
        return info

    def allows(self, gateway: str, *, store: str | None = None) -> bool:
        """Whether the server acts on events and status from `gateway` of `store` (default: the
        configured one): it is registered, or ``gateway_registration`` is ``open``."""
        store = store or self.settings.store
        key = f"{store}/{gateway}"
        if self.settings.gateway_registration == "open" or self.snapshot.is_gateway(store, gateway):
            if self._ignored.pop(key, None) is not None:
                log.info("gateway %s is registered now: listening to it", gateway,
                         extra={"store": store, "gateway": gateway})
            return True
        now = time.monotonic()
        last = self._ignored.get(key)
        if last is None or now - last > QUIET_S:
            log.warning("ignoring gateway %s of store %s: it is not registered (register it with 'esl gateways add "
                        "%s/%s')", gateway, store, store, gateway, extra={"store": store, "gateway": gateway})
        if len(self._ignored) >= _REMEMBERED and key not in self._ignored:
            self._ignored.pop(next(iter(self._ignored)))
        self._ignored[key] = now
        if self.metrics is not None:
            self.metrics.events_refused.labels("unregistered").inc()
        return False
