"""Registering a gateway's public key: what lets the server seal job keys to that gateway.

A gateway makes its own X25519 key pair at first start (`eslserver.gateway.identity`) and
shows the public half (``esl gateway --show-key``); the operator registers it here
(``esl trust gateway STORE/ID KEY``), audited. Until a gateway's key is registered, and until
it has announced a protocol version with signed envelopes, no job goes to it.
"""

from __future__ import annotations

from eslserver.audit import Who, record_audit
from eslserver.db.database import Database
from eslserver.store import gateways as gateway_rows
from eslserver.topics import TopicError, check_level
from firmware_proto.trust import PUBLIC_KEY_SIZE

__all__ = ["TrustSetupError", "register_gateway_key"]


class TrustSetupError(ValueError):
    """A gateway name or key that cannot be registered (names the field; keys are public)."""


async def register_gateway_key(db: Database, store: str, gateway: str, public_key: bytes, *, actor: Who) -> bool:
    """Record `public_key` as gateway `store`/`gateway`'s; True when it changed (audited)."""
    for field, value in (("store", store), ("gateway", gateway)):
        try:
            check_level(field, value)
        except TopicError as exc:
            raise TrustSetupError(str(exc)) from None
    if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_SIZE:
        raise TrustSetupError(f"public_key: expected {PUBLIC_KEY_SIZE} bytes (64 hex digits)")
    async with db.transaction() as conn:
        before = await gateway_rows.public_key(conn, store, gateway)
        if before == public_key:
            return False
        await gateway_rows.set_public_key(conn, store, gateway, public_key)
        await record_audit(conn, actor, "gateway.key", f"{store}/{gateway}",
                           None if before is None else {"public_key": before.hex()}, {"public_key": public_key.hex()})
    return True
