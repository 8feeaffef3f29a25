"""What the database knows about a recorded session, and a self-contained evidence bundle.

The bundle (``broker recordings export``) is an uncompressed tar holding the session directory
as it is on disk (manifest and signature included), the recording public key, ``evidence.json``
(the session row, its grant, the request and its approvals, and every audit row about them),
and ``verify.py``, which needs only Python and ``cryptography`` to check it all.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

from broker.services.progress import SILENT, Progress

PUBLIC_KEY_FILE = "recording-public-key.pem"
HEAD_COPY = "chain-head.json"
EVIDENCE_FILE = "evidence.json"
VERIFY_FILE = "verify.py"


def write_bundle(out: Path, session_dir: Path, public_pem: bytes,
                 evidence: dict[str, Any], progress: Progress = SILENT) -> None:
    """Write the evidence tar to ``out``, which must not exist (FileExistsError);
    ``progress`` counts the recording's bytes as they go in."""
    progress.start(sum(p.stat().st_size for p in session_dir.rglob("*") if p.is_file()))

    def counted(info: tarfile.TarInfo) -> tarfile.TarInfo:
        progress.advance(info.size)
        return info

    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
    try:
        with os.fdopen(fd, "wb") as f, tarfile.open(fileobj=f, mode="w",
                                                    format=tarfile.PAX_FORMAT) as tar:
            tar.add(session_dir, arcname=session_dir.name, recursive=True, filter=counted)
            _add_bytes(tar, PUBLIC_KEY_FILE, public_pem)
            head = session_dir.parent / ".chain-head.json"
            if head.is_file():  # the signed recordings chain head at export time
                _add_bytes(tar, HEAD_COPY, head.read_bytes())
            _add_bytes(tar, EVIDENCE_FILE, json.dumps(evidence, indent=2, sort_keys=True,
                                                      ensure_ascii=False).encode() + b"\n")
            _add_bytes(tar, VERIFY_FILE, VERIFY_SCRIPT.encode(), mode=0o755)
    except BaseException:
        out.unlink(missing_ok=True)
        raise


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


VERIFY_SCRIPT = '''#!/usr/bin/env python3
"""Check this evidence bundle: the session manifest's Ed25519 signature (with the bundled
recording-public-key.pem) and the size and SHA-256 of every file it lists; and the signature
of chain-head.json (the recordings chain head when the bundle was made), which, if it names
this session, must name exactly this manifest.

Usage: python verify.py [BUNDLE_DIR]   (default: the directory holding this script)
Needs Python 3.8+ and the 'cryptography' package. Prints "ok", or one line per problem
(exit status 1). Compare the public key with 'broker recordings pubkey' on the broker.
"""
import argparse
import base64
import binascii
import hashlib
import json
import sys
from pathlib import Path

try:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
except ImportError:
    if __name__ == "__main__" and not {"-h", "--help"} & set(sys.argv[1:]):
        sys.exit("verify.py: the Python package 'cryptography' is needed to check the"
                 " signatures: pip install cryptography (then run this again)")

SEAL = {"manifest.json", "manifest.sig"}


def sha256(path):
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def check(bundle):
    try:
        key = load_pem_public_key((bundle / "recording-public-key.pem").read_bytes())
    except OSError as exc:
        return ["recording-public-key.pem: cannot read it (%s): is %s an evidence bundle?"
                % (exc.strerror or exc, bundle)]
    except ValueError:
        return ["recording-public-key.pem is not a PEM public key"]
    if not isinstance(key, Ed25519PublicKey):
        return ["recording-public-key.pem is not an Ed25519 public key"]
    sessions = [p for p in sorted(bundle.iterdir()) if (p / "manifest.json").is_file()]
    if len(sessions) != 1:
        return ["expected one session directory with a manifest.json, found %d" % len(sessions)]
    directory = sessions[0]
    data = (directory / "manifest.json").read_bytes()
    try:
        key.verify(base64.b64decode((directory / "manifest.sig").read_bytes().strip(),
                                    validate=True), data)
    except (OSError, ValueError, binascii.Error, InvalidSignature):
        return ["manifest signature does not match: the manifest was altered or replaced"]
    manifest = json.loads(data)
    problems = check_head(bundle, key, manifest.get("session"), data)
    if manifest.get("session") != directory.name.partition("-")[2]:
        problems.append("manifest belongs to session %s, not %s"
                        % (manifest.get("session"), directory.name))
    listed = {f["name"]: f for f in manifest["files"]}
    present = {p.relative_to(directory).as_posix(): p for p in directory.rglob("*")
               if p.is_file() and not p.is_symlink()}
    for name in SEAL:
        present.pop(name, None)
    for name, entry in sorted(listed.items()):
        if name not in present:
            problems.append("file %s listed in the manifest is missing" % name)
            continue
        size, digest = sha256(present[name])
        if size != entry["size"]:
            problems.append("file %s has %d bytes, the manifest says %d"
                            % (name, size, entry["size"]))
        elif digest != entry["sha256"]:
            problems.append("file %s was changed (sha256 differs)" % name)
    for name in sorted(set(present) - set(listed)):
        problems.append("file %s is not in the manifest (added after sealing)" % name)
    return problems


def check_head(bundle, key, session, manifest_bytes):
    path = bundle / "chain-head.json"
    if not path.is_file():
        return []
    try:
        head = json.loads(path.read_bytes())
        body = {k: v for k, v in head.items() if k != "signature"}
        key.verify(base64.b64decode(head["signature"], validate=True),
                   json.dumps(body, sort_keys=True, separators=(",", ":"),
                              ensure_ascii=False).encode("utf-8"))
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error,
            InvalidSignature):
        return ["chain-head.json signature does not match: the chain head was altered"]
    if (head.get("session") == session
            and head.get("manifest_sha256") != hashlib.sha256(manifest_bytes).hexdigest()):
        return ["chain-head.json names this session with a different manifest"]
    return []


def main():
    parser = argparse.ArgumentParser(
        prog="verify.py", description="Check a vendor access broker evidence bundle: the"
        " session manifest's Ed25519 signature, every file's size and SHA-256, and the signed"
        " recordings chain head. Prints 'ok' (exit 0) or one line per problem (exit 1).",
        epilog="Compare recording-public-key.pem with 'broker recordings pubkey' on the"
        " broker, or with the key the hospital published, before trusting an 'ok'.")
    parser.add_argument("bundle", nargs="?", type=Path, default=Path(__file__).resolve().parent,
                        help="the unpacked bundle (default: the directory holding verify.py)")
    bundle = parser.parse_args().bundle
    if not bundle.is_dir():
        parser.exit(2, "verify.py: %s is not a directory (unpack the bundle's tar first)\\n"
                    % bundle)
    problems = check(bundle)
    print("\\n".join(problems) or "ok")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
'''
