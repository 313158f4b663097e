"""MQTT passwords in Mosquitto's own hash format, so one stored hash serves every broker.

Mosquitto 2 (``mosquitto_passwd``, its ``password_file``) stores ``$7$ITERATIONS$SALT$HASH``:
PBKDF2-HMAC-SHA512 of the UTF-8 password, ``SALT`` and ``HASH`` in standard base64 with padding,
a 12-byte salt (``mosquitto_passwd`` 2.0; later releases write 64 and read both) and a 64-byte
hash (Mosquitto's ``common/password_mosq.c``). The server keeps this hash in its identity table
(`eslserver.store.identities`); the embedded amqtt broker checks a password against it here,
and the embedded Mosquitto and a Mosquitto set up with ``esl broker-config`` read it from the
password file. The clear password exists only where it is made (`new_password`), shown once.

Why 101 iterations, Mosquitto's own default: every password we make is 256 random bits, so
stretching adds nothing against guessing, while every CONNECT pays for it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from typing import Final

__all__ = ["HASH_PREFIX", "ITERATIONS", "PasswordHashError", "check_hash", "hash_password", "new_password",
           "verify_password"]

HASH_PREFIX: Final = "$7$"
ITERATIONS: Final = 101
_SALT_BYTES: Final = 12
_HASH_BYTES: Final = 64
_MAX_ITERATIONS: Final = 1_000_000
_FORMAT: Final = re.compile(r"\$7\$(\d{1,7})\$([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+)")


class PasswordHashError(ValueError):
    """A stored hash that is not Mosquitto's ``$7$`` format (never quotes the hash itself)."""


def new_password() -> str:
    """A new random password: 32 bytes, URL-safe base64 (43 characters, no ``:`` or blanks)."""
    return secrets.token_urlsafe(32)


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS) -> str:
    """The ``$7$`` hash of `password` (a new random salt unless `salt` is given, for tests)."""
    if not isinstance(password, str) or not password:
        raise ValueError("password must be non-empty text")
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError(f"iterations must be 1..{_MAX_ITERATIONS}, got {iterations!r}")
    salt = os.urandom(_SALT_BYTES) if salt is None else salt
    if len(salt) not in (_SALT_BYTES, _HASH_BYTES):
        raise ValueError(f"salt must be {_SALT_BYTES} or {_HASH_BYTES} bytes (Mosquitto reads no other), "
                         f"got {len(salt)}")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, _HASH_BYTES)
    return f"{HASH_PREFIX}{iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def _parse(stored: str) -> tuple[int, bytes, bytes]:
    match = _FORMAT.fullmatch(stored) if isinstance(stored, str) else None
    if match is None:
        raise PasswordHashError(f"a stored password hash is not Mosquitto's $7$ format ({len(str(stored))} chars)")
    iterations = int(match.group(1))
    try:
        salt = base64.b64decode(match.group(2), validate=True)
        digest = base64.b64decode(match.group(3), validate=True)
    except binascii.Error:
        raise PasswordHashError("a stored password hash has bad base64 in its salt or hash") from None
    if not 1 <= iterations <= _MAX_ITERATIONS or len(salt) not in (_SALT_BYTES, _HASH_BYTES) \
            or len(digest) != _HASH_BYTES:
        raise PasswordHashError(f"a stored password hash has {iterations} iterations, a {len(salt)}-byte salt "
                                f"and a {len(digest)}-byte hash (expected 1..{_MAX_ITERATIONS}, 12 or 64, 64)")
    return iterations, salt, digest


def check_hash(stored: str) -> str:
    """`stored` if it is a well-formed ``$7$`` hash, else `PasswordHashError`."""
    _parse(stored)
    return stored


def verify_password(password: str | None, stored: str) -> bool:
    """Whether `password` is the one `stored` was made from (constant-time comparison); False
    for no password. A malformed `stored` raises `PasswordHashError`."""
    iterations, salt, digest = _parse(stored)
    if not isinstance(password, str) or not password:
        return False
    candidate = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, _HASH_BYTES)
    return hmac.compare_digest(candidate, digest)
