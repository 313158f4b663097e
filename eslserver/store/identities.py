"""The ``mqtt_identities`` table: every statement on it.

One row per MQTT client identity (`eslserver.mqtt_access.Identity`): its user name, role,
store, name, the hash of its password (Mosquitto's ``$7$`` format, never the password), when it
was made, when its password was last set and when it was revoked. Rows are never deleted.
Writes take the caller's transaction connection and never commit; reads take a `Reader`.
"""

from __future__ import annotations

from eslserver.db.database import Connection, Database, Reader, Row, fetchall, fetchone

__all__ = ["active", "get", "insert", "listing", "reinstate", "revoke", "set_password"]


async def get(conn: Reader, username: str) -> Row | None:
    """The whole row of `username` (revoked or not); None when there is none."""
    return await fetchone(conn, "SELECT * FROM mqtt_identities WHERE username = ?", (username,))


async def insert(conn: Connection, username: str, role: str, store: str | None, name: str,
                 password_hash: str, now: str) -> None:
    """A new identity; the user name must be unused (the primary key refuses a second one)."""
    await conn.execute(
        "INSERT INTO mqtt_identities (username, role, store, name, password_hash, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)", (username, role, store, name, password_hash, now, now))


async def set_password(conn: Connection, username: str, password_hash: str, now: str) -> None:
    """Replace the password hash of `username` (an active identity: the caller checked)."""
    await conn.execute("UPDATE mqtt_identities SET password_hash = ?, updated_at = ? WHERE username = ?",
                       (password_hash, now, username))


async def revoke(conn: Connection, username: str, now: str) -> None:
    """Mark `username` revoked at `now` (the caller checked it was not already)."""
    await conn.execute("UPDATE mqtt_identities SET revoked_at = ? WHERE username = ? AND revoked_at IS NULL",
                       (now, username))


async def reinstate(conn: Connection, username: str) -> None:
    """Clear the revocation of `username` (it was given a new password in the same transaction)."""
    await conn.execute("UPDATE mqtt_identities SET revoked_at = NULL WHERE username = ?", (username,))


async def active(conn: Reader) -> list[Row]:
    """``username, role, store, name, password_hash`` of every identity not revoked, by user name
    (what the broker lets in)."""
    return await fetchall(conn, "SELECT username, role, store, name, password_hash FROM mqtt_identities "
                                "WHERE revoked_at IS NULL ORDER BY username")


async def listing(db: Database, *, include_revoked: bool) -> list[Row]:
    """Every committed identity without its hash (``username, role, store, name, created_at,
    updated_at, revoked_at``), by role, store and name."""
    where = "" if include_revoked else " WHERE revoked_at IS NULL"
    return await db.read("SELECT username, role, store, name, created_at, updated_at, revoked_at "
                         f"FROM mqtt_identities{where} ORDER BY role, store, name")
