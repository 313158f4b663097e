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
from pathlib import Path
from typing import Final

from eslserver.config import Settings
from eslserver.keyfile import KeyFileError, load_or_create
from firmware_proto.trust import SigningKey

__all__ = ["SIGNING_KEY_FILE", "SigningKeyError", "load_signing_key", "signing_key_path"]

log = logging.getLogger(__name__)

SIGNING_KEY_FILE: Final = "signing.key"

SigningKeyError = KeyFileError
"""The signing key file cannot be read, made or understood (names the file, never the key)."""


def signing_key_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / SIGNING_KEY_FILE


def load_signing_key(settings: Settings, *, create: bool = True) -> SigningKey:
    """The server's signing key; made (and written 0600) when there is none and `create`."""
    path = signing_key_path(settings)
    if not create and not path.exists():
        raise SigningKeyError(f"signing key {path}: there is none (start the server once, or run "
                              f"`esl trust server-key`)")
    raw, made = load_or_create(path, lambda: SigningKey.generate().private_bytes(), "signing key")
    key = SigningKey.from_bytes(raw)
    if made:
        log.info("made the server's signing key in %s; its public key (every gateway's server_public_key) is %s",
                 path, key.public.hex())
    return key
