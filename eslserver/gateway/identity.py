"""The gateway's own X25519 key pair: job keys reach it sealed to the public half.

Generated at the gateway's first start and kept in its data directory,
``gateway-{store}-{id}.key`` (64 hex digits, the private key; created 0600 and never
widened, `eslserver.keyfile`), so a restart keeps the key the server registered.
``esl gateway --show-key`` prints the public half, which the server's operator registers for
this gateway (``esl trust gateway STORE/ID KEY``); a gateway whose key file is lost gets a new
key and must be registered again (the server's jobs for the old key are refused as
``wrong_key``).

Nothing here imports beyond the standard library and `firmware_proto`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from eslserver.keyfile import KeyFileError, load_or_create
from firmware_proto.trust import GatewayKey

__all__ = ["GatewayKeyError", "load_or_create_key"]

log = logging.getLogger(__name__)

GatewayKeyError = KeyFileError
"""The key file cannot be read, written or understood (names the file, never the key)."""


def load_or_create_key(path: Path) -> tuple[GatewayKey, bool]:
    """The gateway's key pair from `path`, made there first if the file does not exist; and
    whether it was made now."""
    raw, made = load_or_create(path, lambda: GatewayKey.generate().private_bytes(), "gateway key")
    key = GatewayKey.from_bytes(raw)
    if made:
        log.info("made a new gateway key in %s (public key %s): register it with the server", path,
                 key.public.hex())
    return key, made
