"""Verifying recordings: one session's seal (its manifest, signature and files), and the whole
chain (every seal linked to the one before, the signed head, pruned sessions accounted for)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.services.progress import SILENT, Progress

from .layout import METADATA_FILE
from .manifest import (
    BAD_SIGNATURE,
    HEAD_FILE,
    MANIFEST_FILE,
    NOT_SEALED,
    PRUNED_FILE,
    SIGNATURE_FILE,
    _content_files,
    _read_json,
    _session_id,
    _sha256_file,
    read_head,
    read_pruned,
)


def _check_signature(path: Path, public_key: Ed25519PublicKey) -> tuple[bytes | None, list[str]]:
    manifest_path, sig_path = path / MANIFEST_FILE, path / SIGNATURE_FILE
    if not manifest_path.is_file():
        return None, [NOT_SEALED]
    data = manifest_path.read_bytes()
    try:
        signature = base64.b64decode(sig_path.read_bytes().strip(), validate=True)
    except FileNotFoundError:
        return data, [f"{SIGNATURE_FILE} is missing: the manifest cannot be trusted"]
    except (OSError, ValueError, binascii.Error):
        return data, [BAD_SIGNATURE]
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return data, [BAD_SIGNATURE]
    return data, []


def verify_session(path: Path, public_key: Ed25519PublicKey) -> list[str]:
    """What is wrong with a sealed session directory; empty when it is intact."""
    data, problems = _check_signature(path, public_key)
    if data is None or problems:
        return problems
    try:
        manifest = json.loads(data)
        listed = {f["name"]: f for f in manifest["files"]}
    except (ValueError, KeyError, TypeError):
        return ["manifest is signed but unreadable (not a version 1 manifest)"]
    if manifest.get("session") != _session_id(path):
        problems.append(f"manifest belongs to session {manifest.get('session')}, "
                        f"not {_session_id(path)} (the directory was renamed or replaced)")
    present = dict(_content_files(path))
    for name, entry in sorted(listed.items()):
        file = present.get(name)
        if file is None:
            problems.append(f"file {name} listed in the manifest is missing")
            continue
        size, digest = _sha256_file(file)
        if size < entry["size"]:
            problems.append(f"file {name} was truncated ({size} bytes, manifest says "
                            f"{entry['size']})")
        elif size > entry["size"]:
            problems.append(f"file {name} grew ({size} bytes, manifest says {entry['size']})")
        elif digest != entry["sha256"]:
            problems.append(f"file {name} was changed (sha256 differs)")
    for name in sorted(present.keys() - listed.keys()):
        problems.append(f"file {name} is not in the manifest (added after sealing)")
    return problems


def _chain_broken(previous: str, session: str) -> str:
    return f"session {previous} before {session} is missing or its manifest changed (chain broken)"


def verify_all(root: Path, public_key: Ed25519PublicKey,
               live: Collection[str] | None = None,
               progress: Progress = SILENT) -> dict[str, list[str]]:
    """Every session under ``root`` (by session id, oldest first) with its problems.

    Besides each session's own check, each sealed session's link must name a session that
    exists with exactly the manifest it was linked to, and the signed chain head must name
    the last one sealed. ``live`` names the recording directories of sessions live on some
    node (the sessions table): a directory without a manifest that is not among them is a
    finding. Without ``live`` (no database at hand), ``session.json`` without ``ended_at``
    counts as live.
    """
    results: dict[str, list[str]] = {}
    hashes: dict[str, str] = {}
    links: dict[str, dict[str, Any]] = {}
    sealed: dict[str, str] = {}
    if not root.is_dir():
        return results
    directories = [d for d in sorted(root.iterdir()) if d.is_dir() and "-" in d.name]
    progress.start(len(directories))
    for directory in directories:
        progress.advance(1)
        session = _session_id(directory)
        if not (directory / MANIFEST_FILE).exists():
            metadata = _read_json(directory / METADATA_FILE) or {}
            if live is None and not metadata.get("ended_at"):
                continue
            if live is not None and directory.name in live:
                continue
            if live is not None:
                results[session] = [NOT_LIVE]
                continue
        problems = verify_session(directory, public_key)
        results[session] = problems
        data, signature_problems = _check_signature(directory, public_key)
        if data is None:
            continue
        hashes[session] = hashlib.sha256(data).hexdigest()
        if not signature_problems:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                manifest = json.loads(data)
                previous = manifest.get("previous")
                if isinstance(previous, dict):
                    links[session] = previous
                    sealed[session] = str(manifest.get("sealed_at") or "")
    # Sessions deleted by the retention rule (``broker recordings prune``) are listed, signed,
    # with their manifest hashes; a link to one of them is intact.
    pruned, pruned_problems = read_pruned(root, public_key)
    if pruned_problems:
        results[PRUNED_FILE] = pruned_problems
    known = {**pruned, **hashes}
    for session, previous in links.items():
        before = previous.get("session")
        if before is not None and known.get(before) != previous.get("manifest_sha256"):
            results[session].append(_chain_broken(before, session))
    _check_head(root, public_key, known, links, sealed, results)
    return results


NOT_LIVE = ("no manifest, and not live on any node: the seal was stripped, or the session's "
            "node stopped and has not sealed it")


def _check_head(root: Path, public_key: Ed25519PublicKey, known: dict[str, str],
                links: dict[str, dict[str, Any]], sealed: dict[str, str],
                results: dict[str, list[str]]) -> None:
    head, problems = read_head(root, public_key)
    if problems:
        results[HEAD_FILE] = problems
        return
    if head is None:
        if links:
            results[HEAD_FILE] = [f"{HEAD_FILE} is missing: the newest sealed sessions may "
                                  "have been deleted with it"]
        return
    last = head["session"]
    if known.get(last) != head.get("manifest_sha256"):
        results.setdefault(last, []).append(
            f"session {last}, the last one sealed, is missing or its manifest changed "
            "(chain broken)")
        return
    # The chain ends at the signed head: a sealed session sealed after it that no later one
    # links to means an older signed head was put back in place of the newest.
    linked_to = {str(p.get("session")) for p in links.values()}
    for session, sealed_at in sorted(sealed.items()):
        if session != last and session not in linked_to and sealed_at > str(
                head.get("signed_at") or ""):
            results[session].append(f"sealed session {session} is newer than the signed head "
                                    f"{last} (the head was replaced by an older one)")
