"""Sealing recorded sessions: a signed manifest per session, chained from one session to the next.

When a session ends, ``manifest.json`` lists every file of its directory with its size and
SHA-256, the session's metadata, and a link to the previously sealed session (its id and the
SHA-256 of its ``manifest.json`` bytes). ``manifest.sig`` is the Ed25519 signature (base64) of
the exact ``manifest.json`` bytes, made with the broker's recording key.

The link follows the order in which sessions were sealed (sessions overlap, so this is not the
order of their directory names): each seal links to the last one, recorded in
``.chain-head.json`` in the recordings root, under an exclusive ``flock`` on ``.seal.lock``.
Deleting a sealed session therefore leaves a dangling link in the next one, and deleting the
last one leaves the head pointing at nothing; both are reported by :func:`verify_all`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from broker.errors import ConfigError
from broker.fileio import fsync_path, write_atomically

from .layout import METADATA_FILE, write_metadata

if TYPE_CHECKING:
    from broker.config import Config

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
LOCK_FILE = ".seal.lock"
HEAD_FILE = ".chain-head.json"
PRUNED_FILE = ".pruned.json"
MANIFEST_VERSION = 1
INTERRUPTED = "interrupted"
_SEAL_FILES = frozenset({MANIFEST_FILE, SIGNATURE_FILE})
_CHUNK = 1024 * 1024

BAD_SIGNATURE = "manifest signature does not match: the manifest was altered or replaced"
NOT_SEALED = "not sealed"


@dataclass(frozen=True)
class Signer:
    """The recording key, which signs manifests."""

    key: Ed25519PrivateKey

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.key.public_key()

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """Load an Ed25519 PKCS8 PEM private key (``broker init`` creates it)."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"{path}: the recording signing key is missing "
                              "(run 'broker init')") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the recording signing key: "
                              f"{exc.strerror or exc}") from None
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a usable recording signing key ({exc})") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"{path}: the recording signing key must be Ed25519")
        return cls(key)

    @classmethod
    def from_config(cls, config: Config) -> Signer:
        from broker.credentials.keys import KeyPaths

        return cls.from_file(KeyPaths.of(config).recording_key)


_signers: dict[Path, Signer] = {}


def signer_for(config: Config) -> Signer:
    """The configured recording key, loaded once per process (raises ConfigError)."""
    from broker.credentials.keys import KeyPaths

    path = KeyPaths.of(config).recording_key
    signer = _signers.get(path)
    if signer is None:
        signer = _signers[path] = Signer.from_file(path)
    return signer


def public_key_of(config: Config) -> Ed25519PublicKey:
    return Signer.from_config(config).public_key


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False
                      ).encode("utf-8")


def _sha256_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _session_id(directory: Path) -> str:
    return directory.name.partition("-")[2] or directory.name


def _content_files(directory: Path) -> list[tuple[str, Path]]:
    """Every file of a session directory (recursively) except the seal itself, by name."""
    found = []
    for path in directory.rglob("*"):
        name = path.relative_to(directory).as_posix()
        if name in _SEAL_FILES or not path.is_file() or path.is_symlink():
            continue
        found.append((name, path))
    return sorted(found)


def _file_entries(directory: Path) -> list[dict[str, Any]]:
    entries = []
    for name, path in _content_files(directory):
        size, digest = _sha256_file(path)
        entries.append({"name": name, "size": size, "sha256": digest})
    return entries


@contextlib.contextmanager
def _chain_lock(root: Path) -> Iterator[None]:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _last_sealed(root: Path, exclude: str) -> dict[str, Any] | None:
    """The head of the chain: the session sealed last, as ``previous`` names it."""
    head = _read_json(root / HEAD_FILE)
    if head is not None and head.get("directory") != exclude:
        return {"session": head.get("session"), "manifest_sha256": head.get("manifest_sha256")}
    # No head yet (or it was lost): the sealed session with the latest seal time.
    best: tuple[str, str, dict[str, Any]] | None = None
    for directory in sorted(root.iterdir()):
        if directory.name == exclude or not (directory / MANIFEST_FILE).is_file():
            continue
        data = (directory / MANIFEST_FILE).read_bytes()
        manifest = _read_json(directory / MANIFEST_FILE) or {}
        key = (str(manifest.get("sealed_at") or ""), directory.name)
        if best is None or key > best[:2]:
            best = (*key, {"session": _session_id(directory),
                           "manifest_sha256": hashlib.sha256(data).hexdigest()})
    return best[2] if best is not None else None


def seal_directory(path: Path, signer: Signer, *, sealed_by: str = "recovery",
                   now: Callable[[], datetime] | None = None) -> bool:
    """Write ``manifest.json`` and ``manifest.sig`` for a session directory.

    A session that is not marked ended in ``session.json`` (the broker stopped under it) is
    first marked ended now, with end reason ``interrupted``. A directory that is already
    sealed is left alone (re-sealing would break the link from the session after it).
    Returns whether a seal was written.
    """
    moment = (now or (lambda: datetime.now(UTC)))()
    root = path.parent
    with _chain_lock(root):
        if (path / MANIFEST_FILE).exists():
            return False
        metadata = _read_json(path / METADATA_FILE)
        if metadata is None or not metadata.get("ended_at"):
            metadata = {"session": _session_id(path), **(metadata or {})}
            metadata["ended_at"] = moment.astimezone(UTC).isoformat()
            metadata["end_reason"] = metadata.get("end_reason") or INTERRUPTED
            write_metadata(path / METADATA_FILE, metadata, sync=True)
        previous = _last_sealed(root, exclude=path.name) or {}
        manifest = {
            "version": MANIFEST_VERSION,
            "session": _session_id(path),
            "metadata": metadata,
            "files": _file_entries(path),
            "previous": {"session": previous.get("session"),
                         "manifest_sha256": previous.get("manifest_sha256")},
            "sealed_at": moment.astimezone(UTC).isoformat(),
            "sealed_by": sealed_by,
        }
        data = canonical(manifest)
        signature = base64.b64encode(signer.sign(data)) + b"\n"
        # The signature first: a directory counts as sealed once manifest.json exists.
        write_atomically(path / SIGNATURE_FILE, signature)
        write_atomically(path / MANIFEST_FILE, data)
        try:
            write_head(root, signer, {"directory": path.name, "session": manifest["session"],
                                      "manifest_sha256": hashlib.sha256(data).hexdigest(),
                                      "signed_at": manifest["sealed_at"]})
        except OSError:
            # Sealed means named by the chain head too: without the head (a full or failing
            # disk), undo the manifest so that the session is sealed whole later, and the
            # chain stays as it was.
            (path / MANIFEST_FILE).unlink(missing_ok=True)
            raise
    return True


# -- the chain head ------------------------------------------------------------------------

def write_head(root: Path, signer: Signer, head: dict[str, Any]) -> None:
    """Write ``.chain-head.json``, signed (call under :func:`chain_lock`)."""
    body = {k: v for k, v in head.items() if k != "signature"}
    signature = base64.b64encode(signer.sign(canonical(body))).decode("ascii")
    write_atomically(root / HEAD_FILE, canonical({**body, "signature": signature}) + b"\n")


def read_head(root: Path, public_key: Ed25519PublicKey) -> tuple[dict[str, Any] | None,
                                                                 list[str]]:
    """The chain head if it is there and signed by the key; else what is wrong with it."""
    path = root / HEAD_FILE
    if not path.exists():
        return None, []
    head = _read_json(path)
    if head is None or not isinstance(head.get("session"), str):
        return None, [f"{HEAD_FILE} is unreadable: the chain head cannot be checked"]
    if "signature" not in head:
        return None, [f"{HEAD_FILE} is not signed: the chain head was written by someone "
                      "without the key (or never upgraded: start 'broker serve' once)"]
    body = {k: v for k, v in head.items() if k != "signature"}
    try:
        public_key.verify(base64.b64decode(str(head["signature"]), validate=True),
                          canonical(body))
    except (ValueError, binascii.Error, InvalidSignature):
        return None, [f"{HEAD_FILE} signature does not match: the chain head was rewritten"]
    return head, []


def sign_unsigned_head(root: Path, signer: Signer, now: datetime) -> dict[str, Any] | None:
    """Upgrade: sign a chain head written before heads were signed. Returns the head it
    signed (the caller audits that), None when there was nothing to do."""
    if not (root / HEAD_FILE).exists():
        return None
    with _chain_lock(root):
        head = _read_json(root / HEAD_FILE)
        if head is None or "signature" in head or not isinstance(head.get("session"), str):
            return None
        head = {**head, "signed_at": now.astimezone(UTC).isoformat(),
                "unsigned_before": now.astimezone(UTC).isoformat()}
        write_head(root, signer, head)
    return head


async def seal_interrupted(config: Config, recording: str | None) -> None:
    """Seal the recording a stopped broker left open (``Server.start``); never raises."""
    import asyncio

    if not recording:
        return
    path = config.recordings_dir / recording
    try:
        if not path.is_dir():
            log.warning("recording: interrupted session %s has no directory", recording)
            return
        signer = signer_for(config)
        await asyncio.to_thread(seal_directory, path, signer, sealed_by="recovery")
    except Exception:
        log.exception("recording: cannot seal interrupted session %s", recording)


# -- verification --------------------------------------------------------------------------

def record_pruned(root: Path, signer: Signer, sessions: dict[str, str]) -> None:
    """Add sessions (id -> manifest SHA-256) to the signed list of sessions deleted by the
    retention rule, so the links to them still verify. Call under :func:`chain_lock`."""
    known = dict(read_pruned(root, signer.public_key)[0])
    known.update(sessions)
    body = {"sessions": dict(sorted(known.items()))}
    signature = base64.b64encode(signer.sign(canonical(body))).decode("ascii")
    write_atomically(root / PRUNED_FILE, canonical({**body, "signature": signature}) + b"\n")
    fsync_path(root)


def read_pruned(root: Path, public_key: Ed25519PublicKey) -> tuple[dict[str, str], list[str]]:
    """The sessions pruned by retention (id -> manifest SHA-256), and what is wrong with the
    list (an unsigned or altered list is not trusted at all)."""
    path = root / PRUNED_FILE
    if not path.exists():
        return {}, []
    value = _read_json(path)
    sessions = value.get("sessions") if value else None
    if not isinstance(sessions, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in sessions.items()):
        return {}, [f"{PRUNED_FILE} is unreadable: links to pruned sessions cannot be checked"]
    try:
        signature = base64.b64decode(str(value.get("signature") if value else ""), validate=True)
        public_key.verify(signature, canonical({"sessions": sessions}))
    except (ValueError, binascii.Error, InvalidSignature):
        return {}, [f"{PRUNED_FILE} signature does not match: the list of pruned sessions "
                    "was altered"]
    return sessions, []


chain_lock = _chain_lock
