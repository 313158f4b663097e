"""The gateway's own X25519 key pair: job keys reach it sealed to the public half.

Generated at the gateway's first start and kept in its data directory,
``gateway-{store}-{id}.key`` (64 hex digits, the private key; created 0600 and never
widened), so a restart keeps the key the server registered. ``esl gateway --show-key``
prints the public half, which the server's operator registers for this gateway
(``esl trust gateway STORE/ID KEY``); a gateway whose key file is lost gets a new key and
must be registered again (the server's jobs for the old key are refused as ``wrong_key``).

Nothing here imports beyond the standard library and `firmware_proto`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Final

from firmware_proto.trust import GatewayKey, TrustError, key_from_hex

__all__ = ["KEY_FILE_MODE", "GatewayKeyError", "load_or_create_key"]

log = logging.getLogger(__name__)

KEY_FILE_MODE: Final = 0o600


class GatewayKeyError(OSError):
    """The key file cannot be read, written or understood (names the file, never the key)."""


def load_or_create_key(path: Path) -> tuple[GatewayKey, bool]:
    """The gateway's key pair from `path`, made there first if the file does not exist; and
    whether it was made now."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return _create(path), True
    except (OSError, UnicodeDecodeError) as exc:
        raise GatewayKeyError(f"gateway key {path}: cannot read it: {exc}") from None
    try:
        key = GatewayKey.from_bytes(key_from_hex(text, str(path)))
    except TrustError as exc:
        raise GatewayKeyError(f"gateway key {exc} (move it away to make a new key, then register the "
                              f"new public key with the server)") from None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(KEY_FILE_MODE)
        log.info("gateway key %s was readable by others (%o): now 600", path, mode)
    return key, False


def _create(path: Path) -> GatewayKey:
    key = GatewayKey.generate()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError:  # another process made it meanwhile: use that one
        return load_or_create_key(path)[0]
    except OSError as exc:
        raise GatewayKeyError(f"gateway key {path}: cannot create it: {exc}") from None
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key.private_bytes().hex() + "\n")
        out.flush()
        os.fsync(out.fileno())
    log.info("made a new gateway key in %s (public key %s): register it with the server", path,
             key.public.hex())
    return key
