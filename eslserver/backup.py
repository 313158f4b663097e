"""`esl backup` and `esl restore`: the database, the secret key and the signing key, in one file.

The label keys in the database are sealed with the secret key (`eslserver.keyvault`): a
database without its key restores labels nobody can talk to any more (every one must be
paired again by hand), and a key without its database is useless. So a backup holds both,
in one file that only its owner may read (created 0600; it is as secret as the key itself).

The file is an uncompressed POSIX tar (``tar tvf`` lists it) of:

- ``MANIFEST.json``: ``{"format": "eslserver-backup", "version": 1, "eslserver", "schema_version",
  "created_at"}``;
- ``esl.db``: a consistent copy of the database made with SQLite's online backup API through
  `eslserver.db.database.Database.backup_to` (the server may keep running meanwhile: the
  copy is one moment of the database, WAL included, which a copy of the file is not);
- ``secret.key``: the secret key, 64 hex digits, as in ``{data_dir}/secret.key``;
- ``signing.key`` (and ``signing.key.previous`` during a rotation), when the data directory
  has them: the server's Ed25519 signing key, which every gateway trusts. Without it a restored
  server would make a new one, and every gateway would refuse its jobs until given the new
  public key (format version 2; a version 1 backup has none and restores as before).

`restore` writes them into an empty data directory (or, with ``force``, over an existing
database and key file: its ``-wal`` and ``-shm`` go too, they belong to the replaced file),
then opens the result as the server would, so a restore that could not start fails here.
Stop the server before restoring over its data directory.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from eslserver import __version__
from eslserver.config import SECRET_KEY_ENV, Settings
from eslserver.db.database import SCHEMA_VERSION, DatabaseError
from eslserver.db.sqlite import SqliteDatabase
from eslserver.keyfile import replace_key
from eslserver.keyvault import KeyVault, secret_from_text
from eslserver.private_files import FILE_MODE, private_dir
from eslserver.signing import PREVIOUS_KEY_FILE, SIGNING_KEY_FILE
from eslserver.startup import StartupError
from eslserver.timeutil import iso, utcnow

__all__ = ["BackupError", "BackupInfo", "FORMAT", "backup", "restore"]

FORMAT: Final = "eslserver-backup"
VERSION: Final = 2
_READS: Final = (1, 2)
_MANIFEST: Final = "MANIFEST.json"
_DB: Final = "esl.db"
_KEY: Final = "secret.key"
_MEMBERS: Final = frozenset({_MANIFEST, _DB, _KEY})
_SIGNING: Final = (SIGNING_KEY_FILE, PREVIOUS_KEY_FILE)
"""Optional members: the signing key files of the data directory, under their own names."""
_SMALL: Final = 64 * 1024
"""The most the manifest or the key file may hold (the database has no limit)."""


class BackupError(RuntimeError):
    """A backup or restore that cannot be done (names the file and what is wrong)."""


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What a backup holds: its manifest's fields, and the database's size in bytes."""

    path: Path
    eslserver: str
    schema_version: int
    created_at: str
    database_bytes: int


async def backup(settings: Settings, target: Path) -> BackupInfo:
    """Write the data directory's database and secret key into the new file `target` (0600;
    an existing file is never overwritten). The key must be the database's (checked as the
    server checks it at start), so a backup can always be restored."""
    if settings.database_url is not None:
        raise BackupError("the database is on PostgreSQL: back it up with pg_dump (and keep the data "
                          "directory's secret.key and signing.key with it); esl backup copies SQLite data directories")
    path = settings.database_path
    if not path.is_file():
        raise BackupError(f"no eslserver database in data directory {settings.data_dir} (no {path.name})")
    target = Path(target)
    if target.exists():
        raise BackupError(f"{target} already exists: choose a new file name")
    db = SqliteDatabase(path)
    try:
        await db.open()
        vault = KeyVault(settings)
        await vault.load(db)
        with tempfile.TemporaryDirectory(prefix="esl-backup-") as tmp:
            copy = Path(tmp) / _DB
            await db.backup_to(copy)
            created = iso(utcnow())
            manifest = {"format": FORMAT, "version": VERSION, "eslserver": __version__,
                        "schema_version": SCHEMA_VERSION, "created_at": created}
            signing = {name: (settings.data_dir / name).read_bytes() for name in _SIGNING
                       if (settings.data_dir / name).is_file()}
            _write_tar(target, manifest, copy, (vault.secret_text() + "\n").encode(), signing)
            size = copy.stat().st_size
    except (DatabaseError, StartupError, OSError) as exc:
        raise BackupError(f"cannot back up {path}: {_reason(exc)}") from exc
    finally:
        await db.close()
    return BackupInfo(target, __version__, SCHEMA_VERSION, created, size)


def _write_tar(target: Path, manifest: dict[str, Any], database: Path, key: bytes,
               signing: dict[str, bytes]) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as out:
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _add(tar, _MANIFEST, json.dumps(manifest, indent=1).encode())
                info = _info(_DB, database.stat().st_size)
                with database.open("rb") as f:
                    tar.addfile(info, f)
                _add(tar, _KEY, key)
                for name, data in signing.items():
                    _add(tar, name, data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        target.unlink(missing_ok=True)  # no half-written backup that looks like one
        raise


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, FILE_MODE, int(time.time())
    return info


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    tar.addfile(_info(name, len(data)), io.BytesIO(data))


async def restore(settings: Settings, source: Path, *, force: bool = False) -> BackupInfo:
    """Put the database and secret key of the backup `source` into the data directory.

    Refused when the data directory holds anything, unless `force` (then only the database,
    its ``-wal``/``-shm`` and the key file are replaced). With ``ESL_SECRET_KEY`` set, it must
    be the backup's key and no key file is written; otherwise the key goes to
    `Settings.key_file`. The result is opened as the server opens it before this returns.
    """
    source = Path(source)
    data = settings.data_dir
    if data.exists() and any(data.iterdir()) and not force:
        shown = sorted(p.name for p in data.iterdir())
        raise BackupError(f"data directory {data} is not empty ({', '.join(shown[:5])}"
                          f"{', …' if len(shown) > 5 else ''}): restore into an empty one, or add --force to "
                          "replace its database and secret key")
    try:
        tar = tarfile.open(source, mode="r:")
    except (OSError, tarfile.TarError) as exc:
        raise BackupError(f"{source} is not an eslserver backup: {_reason(exc)}") from exc
    with tar:
        members = _members(tar, source)
        manifest = _manifest(tar, members[_MANIFEST], source)
        key_text = _small(tar, members[_KEY], source).decode("ascii", "replace")
        try:
            secret = secret_from_text(key_text, f"{source}: {_KEY}")
        except StartupError as exc:
            raise BackupError(str(exc)) from None
        if settings.secret_key is not None and bytes.fromhex(settings.secret_key.strip()) != secret:
            raise BackupError(f"{SECRET_KEY_ENV} is set to another key than the one in {source}: unset it, or set "
                              "it to the backup's key")
        key_file = settings.key_file
        write_key = settings.secret_key is None and not _holds(key_file, secret)
        if write_key and key_file.exists() and not force:
            raise BackupError(f"{key_file} holds another key: add --force to replace it with the backup's")
        signing = {name: _small(tar, members[name], source) for name in _SIGNING if name in members}
        for name, key_bytes in signing.items():
            if not re.fullmatch(rb"[0-9A-Fa-f]{64}\s*", key_bytes):
                raise BackupError(f"{source}: {name} is not a signing key (64 hex digits)")
        private_dir(data)
        database = settings.database_path
        _extract(tar, members[_DB], database)
        for name, key_text in signing.items():
            replace_key(data / name, bytes.fromhex(key_text.decode("ascii").strip()), "signing key")
    if write_key:
        private_dir(key_file.parent)
        replace_key(key_file, secret, "secret key file")
    await _check(settings)
    return BackupInfo(source, str(manifest["eslserver"]), int(manifest["schema_version"]),
                      str(manifest["created_at"]), database.stat().st_size)


def _members(tar: tarfile.TarFile, source: Path) -> dict[str, tarfile.TarInfo]:
    """The members by name (three, and the signing key files if any); anything else (another
    name, a link, a device, a second copy of a name) makes it not a backup of ours: nothing is
    written from it."""
    found: dict[str, tarfile.TarInfo] = {}
    try:
        for member in tar.getmembers():
            if member.name not in _MEMBERS | set(_SIGNING) or not member.isreg() or member.name in found:
                raise BackupError(f"{source} is not an eslserver backup (it holds {member.name!r})")
            found[member.name] = member
    except tarfile.TarError as exc:
        raise BackupError(f"{source} is not an eslserver backup: {exc}") from exc
    missing = sorted(_MEMBERS - set(found))
    if missing:
        raise BackupError(f"{source} is not a whole eslserver backup: {', '.join(missing)} missing")
    return found


def _small(tar: tarfile.TarFile, member: tarfile.TarInfo, source: Path) -> bytes:
    if member.size > _SMALL:
        raise BackupError(f"{source}: {member.name} is {member.size} bytes, more than a backup writes")
    f = tar.extractfile(member)
    assert f is not None  # a regular file (`_members`)
    return f.read(_SMALL)


def _manifest(tar: tarfile.TarFile, member: tarfile.TarInfo, source: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(_small(tar, member, source))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BackupError(f"{source}: {_MANIFEST} is not JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{source} is not an eslserver backup ({_MANIFEST} has no format {FORMAT!r})")
    if manifest.get("version") not in _READS:
        raise BackupError(f"{source}: backup format version {manifest.get('version')!r}; this eslserver reads "
                          f"versions {', '.join(map(str, _READS))}")
    schema = manifest.get("schema_version")
    if not isinstance(schema, int) or isinstance(schema, bool) or not 1 <= schema <= SCHEMA_VERSION:
        raise BackupError(f"{source}: schema version {schema!r} is not one this eslserver reads "
                          f"(1..{SCHEMA_VERSION}); restore it with eslserver {manifest.get('eslserver')} or newer")
    return manifest


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, database: Path) -> None:
    """The database member into `database`, by way of a 0600 temporary file beside it, so the
    old file is replaced whole or not at all; the old file's ``-wal`` and ``-shm`` are removed
    (applied to the restored file they would corrupt it)."""
    f = tar.extractfile(member)
    assert f is not None
    fd, tmp_name = tempfile.mkstemp(prefix=".esl.db.restore-", dir=database.parent)  # 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := f.read(1 << 20):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        for suffix in ("-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, database)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _holds(path: Path, secret: bytes) -> bool:
    """Whether the key file `path` exists and holds `secret`."""
    try:
        return secret_from_text(path.read_text(encoding="ascii", errors="replace")[:4096], str(path)) == secret
    except (OSError, StartupError):
        return False


async def _check(settings: Settings) -> None:
    """Open the restored database as the server does (migrations, the key's check value)."""
    db = SqliteDatabase(settings.database_path)
    try:
        await db.open()
        await KeyVault(settings).load(db)
    except (DatabaseError, StartupError) as exc:
        raise BackupError(f"the restored database does not open: {exc}") from exc
    finally:
        await db.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename!r}" if exc.filename else exc.strerror
    return str(exc)
