"""A broker killed between writing a session's seal and the chain head: at start-up the head
is moved on to that session (only one whose signature verifies and that links to the head),
so the next seal does not fork the chain and `verify --all` passes."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from broker.recording import SIGNATURE_FILE, Flusher, Signer, seal_directory, verify_all
from broker.recording.head_catchup import catch_up_head
from broker.recording.manifest import HEAD_FILE
from tests.unit.test_manifest import T0, flusher, manifest_of, record, signer

__all__ = ["flusher", "signer"]  # the fixtures, shared with test_manifest


async def crash_before_head(root: Path, signer: Signer, flusher: Flusher) -> Path:
    """s0 sealed; s1 sealed but the head still names s0 (the kill came between)."""
    await record(root, "s0", signer, flusher)
    stale = (root / HEAD_FILE).read_bytes()
    late = await record(root, "s1", signer, flusher, start=T0 + timedelta(minutes=1))
    (root / HEAD_FILE).write_bytes(stale)
    past = (late.path / "manifest.json").stat().st_mtime - 1
    os.utime(root / HEAD_FILE, (past, past))
    return late.path


async def test_the_head_catches_up_and_the_next_seal_keeps_one_chain(tmp_path, flusher,
                                                                     signer):
    await crash_before_head(tmp_path, signer, flusher)
    problems = verify_all(tmp_path, signer.public_key)
    assert any("newer than the signed head" in p for p in problems["s1"])  # the bug, as is

    assert catch_up_head(tmp_path, signer) == ["s1"]
    assert catch_up_head(tmp_path, signer) == []  # once
    interrupted = await record(tmp_path, "s2", None, flusher, start=T0 + timedelta(minutes=2),
                               close=False)
    await flusher.flush_now()
    assert seal_directory(interrupted.path, signer) is True
    assert manifest_of(interrupted.path)["previous"]["session"] == "s1"
    assert verify_all(tmp_path, signer.public_key) == {"s0": [], "s1": [], "s2": []}


async def test_a_follower_whose_signature_fails_is_not_taken(tmp_path, flusher, signer):
    late = await crash_before_head(tmp_path, signer, flusher)
    (late / SIGNATURE_FILE).write_text("AAAA\n")
    head = (tmp_path / HEAD_FILE).read_bytes()
    assert catch_up_head(tmp_path, signer) == []
    assert (tmp_path / HEAD_FILE).read_bytes() == head


async def test_a_right_head_and_no_head_are_left_alone(tmp_path, flusher, signer):
    assert catch_up_head(tmp_path, signer) == []  # nothing sealed yet: no head
    await record(tmp_path, "s0", signer, flusher)
    await record(tmp_path, "s1", signer, flusher, start=T0 + timedelta(minutes=1))
    head = (tmp_path / HEAD_FILE).read_bytes()
    assert catch_up_head(tmp_path, signer) == []
    assert (tmp_path / HEAD_FILE).read_bytes() == head
