"""``broker backup`` / ``broker restore``: one tar holding everything but the recordings.

The archive (gzip-compressed tar, mode 0600) holds, at paths relative to the broker directory
(the directory of ``broker.toml``):

* ``broker.toml``;
* every file under the data directory except the database and the log (the keys: SSH host
  key, user CA, recording signing key, TLS key, vault key, web and webhook secrets), plus any
  other configured key file that lies inside the broker directory;
* the policy directory and the notification templates directory;
* ``database/broker.sqlite3``: a consistent snapshot made with SQLite's online backup API
  (never a raw copy of a WAL database), or ``database/broker.pgdump`` from ``pg_dump -Fc``;
* ``manifest.json``: format, creation time, database kind and audit summary, and the SHA-256,
  size and mode of every other member.

Recordings are not included (they are large, append-only and signed on their own: copy the
recordings directory with its manifests separately). Files the configuration names outside
the broker directory are listed in the manifest under ``not_included``.

Restore verifies every hash before it writes anything, writes only into a directory that has
no broker (no file it would write, no database) yet, and then runs the audit chain check on
the restored database.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from broker.audit import iter_events, verify_rows
from broker.config import Config
from broker.errors import ConfigError, Conflict, StoreError
from broker.services.progress import SILENT, Progress
from broker.store.engine import Store

FORMAT = "broker-backup"
VERSION = 1
MANIFEST = "manifest.json"
SQLITE_MEMBER = "database/broker.sqlite3"
PG_MEMBER = "database/broker.pgdump"
CONFIG_MEMBER = "broker.toml"
# (section, key) of settings that name a file of secrets or certificates
KEY_SETTINGS = (("ssh", "host_key"), ("ssh", "user_ca"), ("http", "tls_cert"),
                ("http", "tls_key"), ("http", "secret_key"), ("recording", "signing_key"),
                ("vault", "key_file"), ("notify", "webhook_secret_file"),
                ("siem", "ca_file"), ("siem", "cert_file"), ("siem", "key_file"))
DIR_SETTINGS = (("policy", "dir"), ("notify", "templates_dir"))
CHUNK = 1 << 20


@dataclass
class AuditSummary:
    rows: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class BackupReport:
    path: Path
    files: list[str]
    database: str
    audit: AuditSummary | None
    not_included: list[str] = field(default_factory=list)


# --- backup ----------------------------------------------------------------------------------

def _relative(base: Path, path: Path) -> str | None:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return None


def _setting(config: Config, section: str, key: str) -> str:
    value = getattr(getattr(config.settings, section, None), key, "")
    return value if isinstance(value, str) else ""


def _sqlite_path(config: Config) -> Path | None:
    url = config.database_url
    if not url.startswith("sqlite"):
        return None
    return Path(url.split(":///", 1)[1])


def _files(config: Config) -> tuple[dict[str, Path], list[str]]:
    """Members (arcname -> file) and what the configuration names outside the directory."""
    base = config.base_dir
    skip = {p.resolve() for p in (config.log_file,) if p}
    database = _sqlite_path(config)
    if database is not None:
        skip |= {Path(f"{database}{suffix}").resolve() for suffix in ("", "-wal", "-shm",
                                                                      "-journal")}
    recordings = config.recordings_dir.resolve()
    found: dict[str, Path] = {CONFIG_MEMBER: Path(config.source)}
    outside: list[str] = []

    def add(path: Path) -> None:
        resolved = path.resolve()
        if (resolved in skip or not path.is_file() or path.is_symlink()
                or recordings in resolved.parents):
            return
        name = _relative(base, path)
        if name is None:
            outside.append(str(path))
        elif name not in found:
            found[name] = path

    def add_tree(directory: Path) -> None:
        if _relative(base, directory) is None:
            if directory.exists():
                outside.append(f"{directory}/")
            return
        if directory.is_dir():
            for path in sorted(directory.rglob("*")):
                add(path)

    add_tree(config.data_dir)
    for section, key in KEY_SETTINGS:
        value = _setting(config, section, key)
        if value:
            add(config.path(value))
            if key == "user_ca":
                add(config.path(value + ".pub"))
    for section, key in DIR_SETTINGS:
        value = _setting(config, section, key)
        if value:
            add_tree(config.path(value))
    return found, outside


def _sqlite_snapshot(source: Path, target: Path) -> None:
    if not source.is_file():
        raise StoreError(f"database {source} does not exist: nothing to back up")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)  # one consistent snapshot, WAL content included
        dst.execute("PRAGMA journal_mode=DELETE")  # a single self-contained file
        dst.commit()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot back up database {source}: {exc}") from None
    finally:
        dst.close()
        src.close()


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password, and an environment carrying it."""
    parsed = make_url(url).set(drivername="postgresql")
    env = dict(os.environ)
    if parsed.password is not None:
        env["PGPASSWORD"] = str(parsed.password)
        parsed = parsed.set(password=None)
    return parsed.render_as_string(hide_password=False), env


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} is not on PATH: install the PostgreSQL client tools"
                          " (apt-get install postgresql-client) to back up or restore a"
                          " PostgreSQL database")
    return found


def _run_tool(argv: list[str], env: dict[str, str], what: str) -> None:
    run = subprocess.run(argv, capture_output=True, text=True, env=env, check=False,
                         timeout=3600)
    if run.returncode != 0:
        lines = (run.stderr or run.stdout).strip().splitlines()
        raise StoreError(f"{what} failed: {lines[0] if lines else f'exit {run.returncode}'}")


def _pg_dump(config: Config, target: Path) -> None:
    url, env = _libpq(config.database_url)
    _run_tool([_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
               f"--file={target}", f"--dbname={url}"], env, "pg_dump")


async def audit_summary(url: str) -> AuditSummary:
    """``broker audit verify`` over the database at ``url`` (any schema revision)."""
    store = Store(url)
    try:
        async with store.session() as db:
            rows = [row async for row in iter_events(db)]
        count, problems = verify_rows(rows)
        return AuditSummary(count, [str(p) for p in problems])
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the audit log of {store.display_url}:"
                         f" {_first_line(exc)}") from None
    finally:
        await store.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tarinfo(name: str, size: int, mode: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, int(mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


async def backup(config: Config, out: Path, now: datetime | None = None,
                 progress: Progress = SILENT) -> BackupReport:
    """Write the archive to ``out`` (which must not exist yet), mode 0600; ``progress``
    counts the bytes written."""
    if out.exists() or out.is_symlink():
        raise Conflict(f"--out {out} already exists: choose a new file name")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: directory {out.parent} does not exist")
    files, outside = _files(config)
    with tempfile.TemporaryDirectory(prefix=".broker-backup-", dir=out.parent) as scratch:
        os.chmod(scratch, 0o700)
        sqlite = _sqlite_path(config)
        if sqlite is not None:
            snapshot, member, kind = Path(scratch) / "db", SQLITE_MEMBER, "sqlite"
            _sqlite_snapshot(sqlite, snapshot)
            audit: AuditSummary | None = await audit_summary(f"sqlite+aiosqlite:///{snapshot}")
        else:
            snapshot, member, kind = Path(scratch) / "db", PG_MEMBER, "postgresql"
            _pg_dump(config, snapshot)
            audit = None  # checked on restore, against the restored copy
        members = {**files, member: snapshot}
        entries: dict[str, dict[str, Any]] = {
            name: {"sha256": _sha256(path), "size": path.stat().st_size,
                   "mode": 0o600 if name == member else path.stat().st_mode & 0o777}
            for name, path in sorted(members.items())}
        manifest = {"format": FORMAT, "version": VERSION,
                    "created_at": (now or datetime.now(UTC)).isoformat(),
                    "database": {"kind": kind, "member": member},
                    "audit": None if audit is None else {"rows": audit.rows, "ok": audit.ok},
                    "recordings": "not included",
                    "not_included": outside, "files": entries}
        try:
            descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise Conflict(f"--out {out} already exists: choose a new file name") from None
        try:
            with os.fdopen(descriptor, "wb") as raw, \
                    tarfile.open(fileobj=raw, mode="w:gz") as tar:
                body = json.dumps(manifest, indent=2, sort_keys=True).encode()
                stamp = datetime.now(UTC).timestamp()
                tar.addfile(_tarinfo(MANIFEST, len(body), 0o600, stamp), io.BytesIO(body))
                progress.start(sum(entry["size"] for entry in entries.values()))
                for name, path in sorted(members.items()):
                    info = _tarinfo(name, entries[name]["size"], entries[name]["mode"],
                                    path.stat().st_mtime)
                    with path.open("rb") as stream:
                        tar.addfile(info, stream)
                    progress.advance(entries[name]["size"])
        except BaseException:
            out.unlink(missing_ok=True)
            raise
    return BackupReport(out, sorted(members), kind, audit, outside)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
