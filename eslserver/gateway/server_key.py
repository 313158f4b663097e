"""Which server key a gateway trusts, and following the server when it rotates its key.

A gateway is configured with the server's public key (``server_public_key``). When the server
rotates its signing key (`eslserver.signing.rotate_signing_key`) its envelopes are signed by the
new key and carry the previous key's endorsement of it (`firmware_proto.trust.Endorsement`); the
gateway checks that endorsement against the key it trusts and follows: it keeps the new key in
its data directory, ``gateway-{store}-{id}.server.key.pub`` (0600, written in one step), and
trusts that key alone from then on, also after a restart. The file names the configured key it
followed from, so that it overrides ``server_public_key`` only while that setting is unchanged:
an operator who sets another key (say, after the old key was stolen and rotated by hand) is
obeyed, and the file is ignored (with one warning).

File layout (ASCII, two lines)::

    configured <64 hex digits>    the server_public_key in force when the gateway first followed
    trusts <64 hex digits>        the key it trusts now

Nothing here imports beyond the standard library, `eslserver.keyfile` and `firmware_proto`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Final

from eslserver.keyfile import KEY_FILE_MODE, KeyFileError
from firmware_proto.trust import VerifyKey

__all__ = ["ServerKeyFileError", "load_trusted_key", "save_followed_key"]

log = logging.getLogger(__name__)

ServerKeyFileError = KeyFileError
"""The followed-key file cannot be read, written or understood (names the file)."""

_LINE: Final = re.compile(r"(configured|trusts) ([0-9a-f]{64})")


def _read(path: Path) -> tuple[VerifyKey, VerifyKey] | None:
    try:
        lines = [line.strip() for line in path.read_text(encoding="ascii").splitlines() if line.strip()]
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerKeyFileError(f"followed server key {path}: cannot read it: {exc}") from None
    matches = [_LINE.fullmatch(line) for line in lines]
    found = {m[1]: m[2] for m in matches if m is not None}
    if len(lines) != 2 or set(found) != {"configured", "trusts"}:
        raise ServerKeyFileError(f"followed server key {path}: expected the lines 'configured <64 hex digits>' and "
                                 f"'trusts <64 hex digits>' (delete the file to trust server_public_key again)")
    return VerifyKey(bytes.fromhex(found["configured"])), VerifyKey(bytes.fromhex(found["trusts"]))


def load_trusted_key(path: Path, configured: VerifyKey | None) -> VerifyKey | None:
    """The server key to trust: the one followed to (kept in `path`) when it was followed from
    `configured`, else `configured` (None: no key, every job is refused)."""
    path = Path(path)
    kept = _read(path)
    if kept is None:
        return configured
    origin, trusted = kept
    if configured != origin:
        log.warning("server_public_key is %s, no longer %s from which this gateway followed the server to key %s: "
                    "trusting the configured key (%s is ignored)",
                    "unset" if configured is None else configured.fingerprint, origin.fingerprint,
                    trusted.fingerprint, path)
        return configured
    return trusted


def save_followed_key(path: Path, configured: VerifyKey, trusted: VerifyKey) -> None:
    """Keep `trusted` as the key to trust while ``server_public_key`` is `configured` (0600,
    replaced in one step: a crash leaves the old file or the new one)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(f"configured {configured.hex()}\ntrusts {trusted.hex()}\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise ServerKeyFileError(f"followed server key {path}: cannot write it: {exc}") from None
