"""The ``tokens`` table: every statement on it.

Holds ids, roles, names and the SHA-256 of each secret, never a secret; checking a secret
and deciding what a role may do are `eslserver.auth`'s. Rows are never deleted: a revoked
token keeps its row (``revoked_at``), so the audit log's ``token:<id>`` targets stay
meaningful.
"""

from __future__ import annotations

from eslserver.db.database import Connection, Database, Reader, Row, fetchone

__all__ = ["exists", "insert", "credentials", "get", "revoke", "listing"]


async def exists(conn: Reader, token_id: str) -> bool:
    """True when a token (revoked or not) has this id."""
    return await fetchone(conn, "SELECT 1 FROM tokens WHERE id = ?", (token_id,)) is not None


async def insert(conn: Connection, token_id: str, secret_hash: str, role: str, name: str,
                 created_at: str, stores: str | None = None) -> None:
    """Store a new token; the id must be unused (the primary key refuses a second one)."""
    await conn.execute("INSERT INTO tokens (id, secret_hash, role, name, created_at, stores) VALUES (?, ?, ?, ?, ?, ?)",
                       (token_id, secret_hash, role, name, created_at, stores))


async def credentials(db: Database, token_id: str) -> Row | None:
    """``secret_hash``, ``role``, ``name``, ``revoked_at``, ``stores`` of a committed token (one
    primary-key read); None when no token has this id."""
    return await db.read_one("SELECT secret_hash, role, name, revoked_at, stores FROM tokens WHERE id = ?", (token_id,))


async def get(conn: Reader, token_id: str) -> Row | None:
    """The whole row (``id``, ``secret_hash``, ``role``, ``name``, ``created_at``,
    ``revoked_at``); None when no token has this id."""
    return await fetchone(conn, "SELECT * FROM tokens WHERE id = ?", (token_id,))


async def revoke(conn: Connection, token_id: str, at: str) -> None:
    """Mark the token revoked at `at` (the caller checks it was not already)."""
    await conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (at, token_id))


async def listing(db: Database, *, include_revoked: bool) -> list[Row]:
    """Every committed token's whole row, oldest first (then by id)."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    return await db.read(f"SELECT * FROM tokens{where} ORDER BY created_at, id")
