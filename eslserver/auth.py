"""API tokens and roles: who is calling, and what they may do.

A token reads ``esl_<id>_<secret>``: ``id`` is 12 hex digits (the row's primary key, safe to
show and log), ``secret`` 32 base32 characters (160 random bits). Only the SHA-256 of the
secret is stored, so a copy of the database does not hand out working tokens; lookup is by
``id`` and the hash comparison is constant-time. A token is printed once, when it is created.

Everything here works on a `Database` only, not a running server, so ``esl tokens create
--data DIR`` works beside a running server on the same SQLite file (WAL, busy timeout), and
a token revoked there is refused by the server on its next request (no cache).

Roles: ``pos`` (prices), ``merchandiser`` (templates, products, prices), ``tech`` (pairing,
LED), ``admin`` (everything, the audit log). Every valid token may read.
"""

from __future__ import annotations

import base64
import getpass
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from eslserver.audit import record_audit
from eslserver.db.database import Database, Row
from eslserver.store import tokens
from eslserver.timeutil import iso, parse_iso, utcnow
from eslserver.topics import TopicError, check_level

__all__ = [
    "ROLES", "Actor", "AuthError", "UnknownTokenError", "TokenInfo",
    "create_token", "verify_token", "revoke_token", "list_tokens", "parse_token",
]

log = logging.getLogger(__name__)

ROLES: Final = ("pos", "merchandiser", "tech", "admin")
TOKEN_PREFIX: Final = "esl"
_TOKEN_RE: Final = re.compile(r"^esl_([0-9a-f]{12})_([a-z2-7]{32})$")
_ID_RE: Final = re.compile(r"^[0-9a-f]{12}$")
_NAME_MAX: Final = 100


class AuthError(ValueError):
    """Bad input to a token operation (a role, name or token id), naming the field and value."""


class UnknownTokenError(AuthError, LookupError):
    """No token with that id."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who did something: a token's name and role (written to the audit log)."""

    name: str
    role: str
    stores: frozenset[str] | None = None
    """The stores of a chain this actor may act on and see; None: every store."""

    def may(self, roles: Collection[str]) -> bool:
        """True when this actor holds one of `roles`; ``admin`` may do everything."""
        return self.role == "admin" or self.role in roles

    def may_store(self, store: str | None) -> bool:
        """True when this actor may act on `store` (None: what belongs to no one store, such as
        the chain's templates: only an actor restricted to no store)."""
        return self.stores is None or (store is not None and store in self.stores)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """A stored token, without its secret."""

    id: str
    role: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    stores: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "role": self.role, "name": self.name,
                "stores": None if self.stores is None else list(self.stores),
                "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def parse_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, None for anything else (never raises)."""
    match = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
    return (match.group(1), match.group(2)) if match else None


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AuthError(f"role: expected one of {', '.join(ROLES)}, got {role!r}")


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > _NAME_MAX or not name.isprintable():
        raise AuthError(f"name: expected 1-{_NAME_MAX} printable characters, got {name!r}")


def _check_stores(stores: Collection[str] | None) -> tuple[str, ...] | None:
    """The sorted store ids of a restricted token (None: every store); `AuthError` names a bad one."""
    if stores is None:
        return None
    scope = tuple(sorted(set(stores)))
    if not scope:
        raise AuthError("stores: expected at least one store id (or none given: every store)")
    for store in scope:
        try:
            check_level("store", store)
        except TopicError as exc:
            raise AuthError(str(exc)) from None
    return scope


def _local_actor() -> Actor:
    """Who runs ``esl tokens`` on the data directory: access to the file is as good as admin."""
    try:
        return Actor(f"cli:{getpass.getuser()}", "admin")
    except (OSError, KeyError):  # no user name in a bare container
        return Actor("cli", "admin")


async def create_token(db: Database, role: str, name: str | None = None, *,
                       stores: Collection[str] | None = None) -> str:
    """A new token for `role`, stored hashed; the returned string is the only copy of it.

    `name` says whose it is (the audit log shows it); it defaults to the role. `stores`
    restricts it to those stores of a chain (None: every store). The creation is audited
    (without the secret).
    """
    _check_role(role)
    name = role if name is None else name
    _check_name(name)
    scope = _check_stores(stores)
    secret = base64.b32encode(secrets.token_bytes(20)).decode("ascii").lower()
    created = utcnow()
    async with db.transaction() as conn:
        while True:  # 48-bit ids: a collision is astronomically rare, but cheap to rule out
            token_id = secrets.token_hex(6)
            if not await tokens.exists(conn, token_id):
                break
        await tokens.insert(conn, token_id, _hash(secret), role, name, iso(created),
                            None if scope is None else ",".join(scope))
        await record_audit(conn, _local_actor(), "token.create", f"token:{token_id}", None,
                           {"role": role, "name": name, **({"stores": list(scope)} if scope is not None else {})})
    log.info("created %s token %s (%s)", role, token_id, name)
    return f"{TOKEN_PREFIX}_{token_id}_{secret}"


async def verify_token(db: Database, token: str) -> Actor | None:
    """The actor a token stands for, or None when it is malformed, unknown or revoked.

    One primary-key read per call (no cache), so a revocation takes effect at once.
    """
    parsed = parse_token(token)
    if parsed is None:
        return None
    token_id, secret = parsed
    row = await tokens.credentials(db, token_id)
    if row is None:
        _hash(secret)  # same work whether or not the id exists
        return None
    if not hmac.compare_digest(_hash(secret), str(row["secret_hash"])):
        return None
    if row["revoked_at"] is not None or row["role"] not in ROLES:
        return None
    scope = row["stores"]
    return Actor(name=str(row["name"]), role=str(row["role"]),
                 stores=None if scope is None else frozenset(s for s in str(scope).split(",") if s))


def _info(row: Row) -> TokenInfo:
    revoked = row["revoked_at"]
    scope = row["stores"]
    return TokenInfo(id=str(row["id"]), role=str(row["role"]), name=str(row["name"]),
                     created_at=parse_iso(row["created_at"]),
                     revoked_at=parse_iso(revoked) if revoked else None,
                     stores=None if scope is None else tuple(s for s in str(scope).split(",") if s))


async def revoke_token(db: Database, token_id: str) -> TokenInfo:
    """Revoke a token by id (idempotent: revoking twice keeps the first time).

    Accepts the id or a whole token (only its id part is used). Unknown ids raise
    `UnknownTokenError`. Audited when it changes something.
    """
    parsed = parse_token(token_id)
    if parsed is not None:
        token_id = parsed[0]
    if not isinstance(token_id, str) or not _ID_RE.fullmatch(token_id):
        # something longer than an id may be a mistyped token: its length, never its text
        shown = repr(token_id) if isinstance(token_id, str) and len(token_id) <= 16 else \
            f"{len(token_id)} characters" if isinstance(token_id, str) else type(token_id).__name__
        raise AuthError(f"id: expected 12 hex digits (as listed by 'esl tokens list'), got {shown}")
    async with db.transaction() as conn:
        row = await tokens.get(conn, token_id)
        if row is None:
            raise UnknownTokenError(f"id: no token {token_id!r}")
        if row["revoked_at"] is None:
            at = iso(utcnow())
            await tokens.revoke(conn, token_id, at)
            await record_audit(conn, _local_actor(), "token.revoke", f"token:{token_id}",
                               {"revoked_at": None}, {"revoked_at": at})
            log.info("revoked token %s (%s)", token_id, row["name"])
            row = await tokens.get(conn, token_id)
            assert row is not None
    return _info(row)


async def list_tokens(db: Database, *, include_revoked: bool = True) -> list[TokenInfo]:
    """Every token (oldest first), without secrets."""
    return [_info(row) for row in await tokens.listing(db, include_revoked=include_revoked)]
