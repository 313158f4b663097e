"""Label keys at rest: sealed with AES-256-GCM under the server's secret key.

A copy of the database (a backup left on a share, a disk sold on) must not hand out the keys
that authenticate frames to every label of the store. So the storage layer only ever holds a
label's key sealed (``labels.label_key``, and the new key of a pairing job in
``jobs.command``), and the clear key exists in memory only where a frame or an envelope is
made (`eslserver.dispatch`).

- **The secret key** is 32 bytes written as 64 hex digits (``openssl rand -hex 32``): from
  ``ESL_SECRET_KEY`` if set, else from `Settings.key_file` (``{data_dir}/secret.key``, or
  ``secret_key_file``), which the first start creates (0600) when the database holds no key yet.
  Every server instance on one database needs the same key.
- **Sealed value** = version ``01`` ‖ nonce (12 random bytes) ‖ AES-256-GCM ciphertext and
  tag of the 16-byte label key. The associated data names the row: purpose, store and MAC.
  A sealed key copied onto another label's row (or into another store) does not open; a
  pairing job's new key is sealed for its label exactly as the label's own key is, since
  that is what it becomes when the pairing is acknowledged.
- **The check value** (`eslserver.store.secrets_check`): a constant sealed under the key the
  database was first written with. A server started with another key stops at start with
  one line (`KeyMismatchError`), before it could fail every job or seal new keys under a key
  the others do not have.
- **Upgrade**: keys an older release stored in clear (16 bytes) are sealed at the first
  start, in the transaction that records the check value, and the file is then compacted
  (``VACUUM``, WAL checkpoint): the clear bytes are gone from the file, not only unlinked
  from the table into free pages.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eslserver.config import SECRET_KEY_ENV, Settings
from eslserver.db.database import Database
from eslserver.private_files import FILE_MODE, create_private, private_dir, tighten
from eslserver.startup import StartupError
from eslserver.store import jobs as job_rows
from eslserver.store import labels as label_rows
from eslserver.store import secrets_check
from eslserver.timeutil import iso, utcnow
from firmware_proto.auth import KEY_SIZE, new_label_key

__all__ = ["KeyMismatchError", "KeyVault", "SealError", "SECRET_SIZE", "read_secret_file", "secret_from_text"]

log = logging.getLogger(__name__)

SECRET_SIZE: Final = 32
_VERSION: Final = b"\x01"
_NONCE: Final = 12
_CHECK: Final = b"eslserver secret key check v1"
_CHECK_AAD: Final = b"eslserver/secrets_check"
_HEX: Final = re.compile(r"[0-9A-Fa-f]{64}")


class SealError(ValueError):
    """A sealed value that does not open: another row's, another key's, or damaged. Never
    quotes the value."""


class KeyMismatchError(StartupError):
    """The secret key is not the one the database was written with (or there is none)."""

    def __init__(self, message: str) -> None:
        super().__init__("secret_key_file", message,
                         fix=f"set {SECRET_KEY_ENV} or secret_key_file to the original")


def secret_from_text(text: str, where: str) -> bytes:
    """The 32 bytes written as 64 hex digits in `text` (surrounding blanks ignored); a
    `StartupError` naming `where` otherwise (the text itself is never quoted)."""
    text = text.strip()
    if not _HEX.fullmatch(text):
        raise StartupError("secret_key_file", f"{where}: expected 64 hex digits (32 bytes, as 'openssl rand "
                                              f"-hex 32' prints), found {len(text)} characters")
    return bytes.fromhex(text)


def read_secret_file(path: os.PathLike[str] | str) -> bytes:
    """The secret key in the file `path` (`secret_from_text`)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return secret_from_text(f.read(4096), f"secret key file {path}")
    except OSError as exc:
        raise StartupError("secret_key_file", f"cannot read the secret key file {path}: "
                                              f"{exc.strerror or exc}") from exc


def _label_aad(store: str, mac: str) -> bytes:
    return b"eslserver/label_key\x00" + store.encode() + b"\x00" + mac.upper().encode()


class KeyVault:
    """Seals and opens label keys. `load` it (at start, on the open database) before use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._aead: AESGCM | None = None
        self._secret = b""
        self.source = ""
        """Where the key came from (``ESL_SECRET_KEY``, ``secret key file …``), for messages."""

    # -- sealing ------------------------------------------------------------------------------
    @property
    def aead(self) -> AESGCM:
        if self._aead is None:
            raise RuntimeError("the key vault is not loaded (KeyVault.load at start)")
        return self._aead

    def _seal(self, clear: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return _VERSION + nonce + self.aead.encrypt(nonce, clear, aad)

    def _open(self, sealed: bytes, aad: bytes, what: str) -> bytes:
        sealed = bytes(sealed)
        if len(sealed) <= 1 + _NONCE or sealed[:1] != _VERSION:
            raise SealError(f"{what} is not a sealed value of this server ({len(sealed)} bytes)")
        try:
            return self.aead.decrypt(sealed[1:1 + _NONCE], sealed[1 + _NONCE:], aad)
        except InvalidTag:
            raise SealError(f"{what} does not open under the server's secret key (sealed for another "
                            "label, under another key, or damaged)") from None

    def seal_label_key(self, store: str, mac: str, key: bytes) -> bytes:
        """`key` (16 bytes) sealed for label `mac` of `store`."""
        if len(key) != KEY_SIZE:
            raise SealError(f"label key for {mac}: expected {KEY_SIZE} bytes, got {len(key)}")
        return self._seal(key, _label_aad(store, mac))

    def open_label_key(self, store: str, mac: str, sealed: bytes) -> bytes:
        """The clear key of label `mac` of `store`; `SealError` if `sealed` was not sealed for
        that label under this key."""
        key = self._open(sealed, _label_aad(store, mac), f"the key of label {mac}")
        if len(key) != KEY_SIZE:
            raise SealError(f"the key of label {mac}: expected {KEY_SIZE} bytes, got {len(key)}")
        return key

    def new_label_key(self, store: str, mac: str) -> bytes:
        """A fresh random label key for pairing `mac`, sealed: the clear key never leaves here."""
        return self.seal_label_key(store, mac, new_label_key())

    # -- the secret key --------------------------------------------------------------------------
    async def load(self, db: Database) -> None:
        """Find the secret key, check it against the database's check value (recording one if
        there is none) and seal the keys an older release left in clear. `StartupError`
        (`KeyMismatchError`) when the key cannot be found, read or is not the database's."""
        check = await secrets_check.get(db)
        secret, self.source = self._find(recorded=check is not None)
        self._aead, self._secret = AESGCM(secret), secret
        if check is not None:
            try:
                opened = self._open(check, _CHECK_AAD, "the check value")
            except SealError:
                opened = b""
            if opened != _CHECK:
                self._aead, self._secret = None, b""
                raise KeyMismatchError(f"the secret key does not match the one this database was written "
                                       f"with (key from {self.source})")
        await self._seal_clear_keys(db, record_check=check is None)

    def secret_text(self) -> str:
        """The loaded secret key as 64 hex digits, for `eslserver.backup` alone (a backup
        without it restores labels nobody can talk to)."""
        if not self._secret:
            raise RuntimeError("the key vault is not loaded (KeyVault.load at start)")
        return self._secret.hex()

    def derive(self, purpose: str) -> bytes:
        """32 bytes derived from the secret key for `purpose` (HMAC-SHA256 under the key): the
        same on every instance and every start, telling nothing about the key itself. The
        server's own MQTT password is one (`eslserver.identities.server_password`)."""
        if not self._secret:
            raise RuntimeError("the key vault is not loaded (KeyVault.load at start)")
        return hmac.new(self._secret, b"eslserver/derive\x00" + purpose.encode("utf-8"), hashlib.sha256).digest()

    def check_value(self) -> bytes:
        """The database's check value for this key."""
        return self._seal(_CHECK, _CHECK_AAD)

    def _find(self, *, recorded: bool) -> tuple[bytes, str]:
        """(the key, where it came from); creates the key file when none exists and the
        database holds no key yet."""
        s = self.settings
        if s.secret_key is not None:
            return secret_from_text(s.secret_key, SECRET_KEY_ENV), SECRET_KEY_ENV
        path = s.key_file
        where = f"secret key file {path}"
        if path.exists():
            if s.secret_key_file is None:  # ours, in the data directory (a mounted secret is not ours)
                tighten(path)
            return read_secret_file(path), where
        if recorded:
            raise KeyMismatchError(f"the secret key does not match the one this database was written with "
                                   f"({where} does not exist and {SECRET_KEY_ENV} is not set)")
        secret = os.urandom(SECRET_SIZE)
        try:
            private_dir(path.parent)
            if not create_private(path):
                raise FileExistsError(path)  # appeared meanwhile (another instance): read that one
            with open(path, "w", encoding="ascii") as f:
                f.write(secret.hex() + "\n")
                f.flush()
                os.fsync(f.fileno())
        except FileExistsError:
            return read_secret_file(path), where
        except OSError as exc:
            raise StartupError("secret_key_file", f"cannot create the secret key file {path}: "
                                                  f"{exc.strerror or exc}") from exc
        log.info("created the secret key file %s (mode %04o): back it up with the database, without it every "
                 "label must be paired again", path, FILE_MODE)
        return secret, where

    async def _seal_clear_keys(self, db: Database, *, record_check: bool) -> None:
        """Seal every key stored in clear (an older release's), and record the check value
        if none is; the clear bytes are overwritten in the file (``secure_delete``, then a
        checkpoint of the WAL into it)."""
        labels = await label_rows.keys_in_clear(db)
        pairings = await job_rows.pair_keys_in_clear(db)
        if not labels and not pairings and not record_check:
            return
        async with db.transaction() as conn:
            if record_check and await secrets_check.get(conn) is None:
                await secrets_check.put(conn, self.check_value(), now=iso(utcnow()))
            await label_rows.replace_keys(conn, [(self.seal_label_key(r["store"], r["mac"], bytes(r["label_key"])),
                                                  r["mac"]) for r in labels])
            await job_rows.replace_pair_keys(conn, [(self.seal_label_key(r["store"], r["mac"], bytes(r["command"])),
                                                     r["id"]) for r in pairings])
        if labels or pairings:
            await db.compact()  # the clear keys' old pages and free space are rewritten, not just unlinked
            log.info("sealed %d label keys and %d pairing keys an older release stored in clear",
                     len(labels), len(pairings))

