"""The server's Ed25519 signing key: every job envelope it publishes is signed with it.

Gateways run only envelopes that verify under the server's public key (their
``server_public_key`` setting, printed by ``esl trust server-key``), so a broker client that
publishes on a gateway's job topic cannot make it do anything.

Where the key lives: ``{data_dir}/signing.key``, 64 hex digits (the private key), created 0600
at the first start that needs it, never widened. Every server instance of one database needs
the same file. `load_signing_key` is the one place that reads or makes it: the seam where the
key can move next to the other server secrets (sealed under ``ESL_SECRET_KEY``) without any
caller changing. No log line or error quotes the private key.

Rotation (`rotate_signing_key`, behind ``esl trust rotate-server-key``): the current key moves to
``{data_dir}/signing.key.previous`` and a new ``signing.key`` is made. While the previous key is
kept, the server signs with the new key and every envelope carries the previous key's
endorsement of it (`load_signer`, `firmware_proto.trust.Endorsement`), so each gateway still
configured with the previous key follows at its next job. Deleting ``signing.key.previous``
ends the endorsements: do it once every gateway reports the new key (its status event's
``server_key``). Rotating again while a previous key is kept would strand the gateways that
have not followed yet (one step only), so it is refused unless forced.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from eslserver.config import Settings
from eslserver.keyfile import KeyFileError, load_existing, load_or_create, replace_key
from firmware_proto.trust import SigningKey

__all__ = ["SIGNING_KEY_FILE", "PREVIOUS_KEY_FILE", "SigningKeyError", "load_signing_key", "signing_key_path",
           "previous_key_path", "load_signing_keys", "load_signer", "rotate_signing_key"]

log = logging.getLogger(__name__)

SIGNING_KEY_FILE: Final = "signing.key"
PREVIOUS_KEY_FILE: Final = "signing.key.previous"

SigningKeyError = KeyFileError
"""The signing key file cannot be read, made or understood (names the file, never the key)."""


def signing_key_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / SIGNING_KEY_FILE


def previous_key_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / PREVIOUS_KEY_FILE


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


def load_signing_keys(settings: Settings, *, create: bool = True) -> tuple[SigningKey, SigningKey | None]:
    """The current signing key (as `load_signing_key`) and the previous one, None when there is
    none (or it is the current one: a rotation interrupted before the new key was in place)."""
    current = load_signing_key(settings, create=create)
    raw = load_existing(previous_key_path(settings), "previous signing key")
    if raw is None:
        return current, None
    previous = SigningKey.from_bytes(raw)
    return current, None if previous.public == current.public else previous


def load_signer(settings: Settings) -> SigningKey:
    """What the server signs envelopes with: the current key, carrying the previous key's
    endorsement of it while a previous key is kept."""
    current, previous = load_signing_keys(settings)
    if previous is None:
        return current
    log.info("signing with key %s, endorsed by the previous key %s (delete %s once every gateway "
             "reports server_key %s)", current.public.fingerprint, previous.public.fingerprint,
             previous_key_path(settings), current.public.fingerprint)
    return current.endorsed_by(previous)


def rotate_signing_key(settings: Settings, *, force: bool = False) -> tuple[SigningKey, SigningKey]:
    """Make a new signing key; the current one becomes the previous key (both files 0600).
    Returns (old, new). The running server keeps signing with what it loaded: restart it (every
    instance, each with these two files) to sign with the new key.

    Refused (`SigningKeyError`) when there is no key yet (nothing to rotate: gateways were
    given none) and, unless `force`, when a previous key is still kept: replacing it would
    leave the gateways that still trust it unable to follow.
    """
    path, previous_path = signing_key_path(settings), previous_key_path(settings)
    old, previous = load_signing_keys(settings, create=False)
    if previous is not None and not force:
        raise SigningKeyError(f"previous signing key {previous_path}: still kept, so gateways may still trust "
                              f"key {previous.public.fingerprint}; delete it once every gateway reports "
                              f"server_key {old.public.fingerprint}, or force the rotation (gateways on "
                              f"{previous.public.fingerprint} then need server_public_key set by hand)")
    new = SigningKey.generate()
    replace_key(previous_path, old.private_bytes(), "previous signing key")  # first: a crash keeps both keys
    replace_key(path, new.private_bytes(), "signing key")
    log.info("rotated the server's signing key: %s -> %s (the previous key is kept in %s)",
             old.public.fingerprint, new.public.fingerprint, previous_path)
    return old, new
