"""``broker restore``: a backup archive (:mod:`broker.services.backup`) back into an empty
broker directory, every hash verified before anything is written, the audit chain checked on
the restored database."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from broker.config import Config, settings_from
from broker.errors import ConfigError, Conflict, Refused, StoreError
from broker.services.backup import (
    CHUNK,
    CONFIG_MEMBER,
    FORMAT,
    MANIFEST,
    VERSION,
    AuditSummary,
    _first_line,
    _libpq,
    _pg_tool,
    _run_tool,
    _sqlite_path,
    audit_summary,
)
from broker.services.progress import SILENT, Progress
from broker.store.engine import Store


@dataclass
class RestoreReport:
    directory: Path
    files: list[str]
    database: str
    audit: AuditSummary


def _safe_name(name: str) -> bool:
    path = PurePosixPath(name)
    return (bool(name) and not path.is_absolute() and ".." not in path.parts
            and "\\" not in name and path.as_posix() == name)


def _read_manifest(tar: tarfile.TarFile, source: Path) -> dict[str, Any]:
    try:
        member = tar.getmember(MANIFEST)
        stream = tar.extractfile(member)
        manifest = json.loads(stream.read() if stream else b"")
    except (KeyError, ValueError):
        raise Refused(f"{source}: no readable {MANIFEST}: not a broker backup") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise Refused(f"{source}: {MANIFEST} is not a broker backup manifest")
    if manifest.get("version") != VERSION:
        raise Refused(f"{source}: backup format version {manifest.get('version')!r} is not"
                      f" supported (this broker reads version {VERSION})")
    files = manifest.get("files")
    database = manifest.get("database")
    if (not isinstance(files, dict) or not isinstance(database, dict)
            or database.get("member") not in files or CONFIG_MEMBER not in files):
        raise Refused(f"{source}: {MANIFEST} lacks the file list, the database or broker.toml")
    return manifest


def _stage(tar: tarfile.TarFile, source: Path, manifest: dict[str, Any],
           staging: Path, progress: Progress) -> dict[str, Path]:
    """Every member checked against the manifest and written under ``staging``."""
    expected: dict[str, Any] = manifest["files"]
    staged: dict[str, Path] = {}
    progress.start(sum(e.get("size", 0) for e in expected.values()
                       if isinstance(e, dict) and isinstance(e.get("size"), int)))
    for member in tar:
        name = member.name
        if name == MANIFEST:
            continue
        if not _safe_name(name) or not member.isfile():
            raise Refused(f"{source}: member {name!r} is not a plain file with a relative"
                          " path: refusing the backup")
        if name in staged:
            raise Refused(f"{source}: member {name!r} appears twice")
        entry = expected.get(name)
        if not isinstance(entry, dict):
            raise Refused(f"{source}: member {name!r} is not in the manifest (added?)")
        target = staging / f"{len(staged):05d}"
        digest = hashlib.sha256()
        stream = tar.extractfile(member)
        assert stream is not None
        descriptor = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            while chunk := stream.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                progress.advance(len(chunk))
        if not hmac.compare_digest(digest.hexdigest(), str(entry.get("sha256", ""))):
            raise Refused(f"{source}: {name} does not match its SHA-256 in the manifest"
                          " (altered or corrupt): nothing was restored")
        staged[name] = target
    missing = sorted(set(expected) - set(staged))
    if missing:
        raise Refused(f"{source}: {missing[0]} is in the manifest but not in the archive"
                      " (removed?): nothing was restored")
    return staged


def _restored_config(staged_toml: Path, directory: Path) -> Config:
    try:
        raw = tomllib.loads(staged_toml.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise Refused(f"broker.toml in the backup is not valid TOML: {exc}") from None
    return settings_from(raw, dict(os.environ), directory / CONFIG_MEMBER)


async def _pg_is_empty(url: str) -> bool:
    store = Store(url)
    try:
        async with store.engine.connect() as connection:
            result = await connection.exec_driver_sql(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
            return int(result.scalar_one()) == 0
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"cannot use database {store.display_url}: {_first_line(exc)}"
                         ) from None
    finally:
        await store.close()


def _open_archive(source: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(source, mode="r:*")
    except tarfile.TarError:
        raise Refused(f"{source}: not a broker backup (not a tar archive)") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None


async def restore(source: Path, directory: Path, progress: Progress = SILENT) -> RestoreReport:
    """Restore ``source`` into ``directory``; nothing is written unless every hash matches
    and nothing there would be overwritten."""
    if not source.is_file():
        raise ConfigError(f"{source}: no such backup file")
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    try:
        return await _restore(source, directory, progress)
    except BaseException:
        if created:  # leave no empty directory behind a refused restore
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


async def _restore(source: Path, directory: Path, progress: Progress) -> RestoreReport:
    with _open_archive(source) as tar, \
            tempfile.TemporaryDirectory(prefix=".broker-restore-", dir=directory) as scratch:
        staging = Path(scratch)
        os.chmod(staging, 0o700)
        try:
            manifest = _read_manifest(tar, source)
            staged = _stage(tar, source, manifest, staging, progress)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise Refused(f"{source}: the archive is damaged ({exc}): nothing was restored"
                          ) from None
        config = _restored_config(staged[CONFIG_MEMBER], directory)
        config = await _place(config, manifest, staged, directory)
    audit = await audit_summary(config.database_url)
    if not audit.ok:
        raise Refused(f"restored into {directory}, but the audit chain of the restored"
                      f" database is broken ({len(audit.problems)} problem(s); first:"
                      f" {audit.problems[0]}): do not use this copy")
    return RestoreReport(directory, sorted(staged), manifest["database"].get("kind"), audit)


async def _place(config: Config, manifest: dict[str, Any], staged: dict[str, Path],
                 directory: Path) -> Config:
    """Move the verified files into place, unless any of them would overwrite something."""
    db_member = manifest["database"]["member"]
    kind = manifest["database"].get("kind")
    plan = {name: directory / name for name in staged if name != db_member}
    sqlite = _sqlite_path(config)
    if (kind == "sqlite") != (sqlite is not None):
        raise Refused(f"the backup holds a {kind} database but the restored broker.toml"
                      f" uses {config.database_url.split(':', 1)[0]}")
    if sqlite is not None:
        plan[db_member] = sqlite
    for target in plan.values():
        if target.exists() or target.is_symlink():
            raise Conflict(f"{target} already exists: restore only into a directory with"
                           " no broker in it (nothing was restored)")
    pg_restore = "" if sqlite is not None else _pg_tool("pg_restore")
    if sqlite is None and not await _pg_is_empty(config.database_url):
        raise Conflict(f"database {make_url(config.database_url).render_as_string()} is"
                       " not empty: restore only into an empty database (nothing was"
                       " restored)")
    for name, target in sorted(plan.items()):
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # never group/world-writable, whatever the manifest says
        listed = manifest["files"][name].get("mode")
        mode = listed & 0o755 if isinstance(listed, int) and name != db_member else 0o600
        os.chmod(staged[name], mode)
        shutil.move(staged[name], target)
    config.recordings_dir.mkdir(parents=True, exist_ok=True)
    if sqlite is None:
        url, env = _libpq(config.database_url)
        _run_tool([pg_restore, "--no-owner", "--no-privileges",
                   "--exit-on-error", f"--dbname={url}", str(staged[db_member])],
                  env, "pg_restore")
    return config
