"""broker.fileio.write_atomically: the whole new content, or the old one untouched."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from broker.fileio import write_atomically


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_replaces_the_whole_file_with_the_mode_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "keys"
    target.write_bytes(b"old content that is longer than the new one\n")
    write_atomically(target, b"new\n", mode=0o600)
    assert target.read_bytes() == b"new\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _leftovers(tmp_path) == []


def test_creates_a_missing_file_narrowed_by_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomically(tmp_path / "cert", b"x", mode=0o644, sync=False)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "cert").stat().st_mode) == 0o600


def test_a_failed_replace_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "inside").write_text("keep")
    with pytest.raises(OSError):
        write_atomically(target, b"new")
    assert (target / "inside").read_text() == "keep"
    assert _leftovers(tmp_path) == []


_WRITE_PAST_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from broker.fileio import write_atomically
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (8, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    write_atomically(Path(sys.argv[1]), b"a new content longer than eight bytes")
except OSError as exc:
    print(exc.errno)
"""


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "head.json"
    target.write_bytes(b"old")
    done = subprocess.run([sys.executable, "-c", _WRITE_PAST_A_FILE_SIZE_LIMIT, str(target)],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(errno.EFBIG)
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []
