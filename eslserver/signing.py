"""The server's Ed25519 signing key: every job envelope it publishes is signed with it.

Gateways run only envelopes that verify under the server's public key (their
``server_public_key`` setting, printed by ``esl trust server-key``), so a broker client that
publishes on a gateway's job topic cannot make it do anything.

Where the key lives: ``{data_dir}/signing.key``, 64 hex digits (the private key), created 0600
at the first start that needs it, never widened. Every server instance of one database needs
the same file. `load_signing_key` is the one place that reads or makes it: the seam where the
key can move next to the other server secrets (sealed under ``ESL_SECRET_KEY``) without any
caller changing. No log line or error quotes the private key.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Final

from eslserver.config import Settings
from firmware_proto.trust import SigningKey, TrustError, key_from_hex

__all__ = ["SIGNING_KEY_FILE", "SigningKeyError", "load_signing_key", "signing_key_path"]

log = logging.getLogger(__name__)

SIGNING_KEY_FILE: Final = "signing.key"


class SigningKeyError(OSError):
    """The signing key file cannot be read, made or understood (names the file, never the key)."""


def signing_key_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / SIGNING_KEY_FILE


def load_signing_key(settings: Settings, *, create: bool = True) -> SigningKey:
    """The server's signing key; made (and written 0600) when there is none and `create`."""
    path = signing_key_path(settings)
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        if not create:
            raise SigningKeyError(f"signing key {path}: there is none (start the server once, or run "
                                  f"`esl trust server-key`)") from None
        return _create(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningKeyError(f"signing key {path}: cannot read it: {exc}") from None
    try:
        key = SigningKey.from_bytes(key_from_hex(text, str(path)))
    except TrustError as exc:
        raise SigningKeyError(f"signing key {exc}") from None
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(0o600)
        log.info("signing key %s was readable by others (%o): now 600", path, mode)
    return key


def _create(path: Path) -> SigningKey:
    key = SigningKey.generate()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another instance made it meanwhile
        return SigningKey.from_bytes(key_from_hex(path.read_text(encoding="ascii"), str(path)))
    except OSError as exc:
        raise SigningKeyError(f"signing key {path}: cannot create it: {exc}") from None
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(key.private_bytes().hex() + "\n")
        out.flush()
        os.fsync(out.fileno())
    log.info("made the server's signing key in %s; its public key (every gateway's server_public_key) is %s",
             path, key.public.hex())
    return key
