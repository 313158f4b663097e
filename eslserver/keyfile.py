"""A private key in a file of its own: 64 hex digits, created 0600 on first use, never widened.

The server's signing key (`eslserver.signing`) and a gateway's own key
(`eslserver.gateway.identity`) both live so. Nothing here imports beyond the standard library
(the gateway installs without the server's dependencies), and no message quotes the key.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["KEY_FILE_MODE", "KeyFileError", "load_or_create", "load_existing", "replace_key"]

log = logging.getLogger(__name__)

KEY_FILE_MODE: Final = 0o600
_HEX32: Final = re.compile(r"[0-9A-Fa-f]{64}")


class KeyFileError(OSError):
    """The key file cannot be read, made or understood (names the file, never the key)."""


def load_or_create(path: Path, make: Callable[[], bytes], what: str) -> tuple[bytes, bool]:
    """The 32 bytes kept in `path`; when there is no such file, `make()` them and write them
    there first (0600, its directory 0700). Returns them and whether they were made now."""
    path = Path(path)
    raw = load_existing(path, what)
    if raw is None:
        return _create(path, make, what)
    return raw, False


def load_existing(path: Path, what: str) -> bytes | None:
    """The 32 bytes kept in `path`, or None when there is no such file (a file readable by
    others is made 0600 first)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{what} {path}: cannot read it: {exc}") from None
    if not _HEX32.fullmatch(text):
        raise KeyFileError(f"{what} {path}: expected 64 hex digits, found {len(text)} characters (move it away "
                           f"to make a new key)")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        path.chmod(KEY_FILE_MODE)
        log.info("%s %s was readable by others (%o): now 600", what, path, mode)
    return bytes.fromhex(text)


def replace_key(path: Path, raw: bytes, what: str) -> None:
    """Write `raw` to `path` (0600) in one step: a temporary file, synced, renamed over it, so a
    crash leaves the old file or the new one, never half of either."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(raw.hex() + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: cannot write it: {exc}") from None


def _create(path: Path, make: Callable[[], bytes], what: str) -> tuple[bytes, bool]:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError:  # another process made it meanwhile: use that one
        return load_or_create(path, make, what)[0], False
    except OSError as exc:
        raise KeyFileError(f"{what} {path}: cannot create it: {exc}") from None
    raw = make()
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(raw.hex() + "\n")
        out.flush()
        os.fsync(out.fileno())
    return raw, True
