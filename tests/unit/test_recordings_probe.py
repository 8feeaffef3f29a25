"""The probe of the recordings directory before each new session: a passed probe stands for
the sessions of the next second (a burst of logins makes one probe), and a failure (the
flusher's, a recording that could not be created) ends that at once."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from broker.services.context import Context
from broker.services.readiness import PROBE_FRESH, NodeState, new_session_refusal


def context(recordings: Path) -> Context:
    return SimpleNamespace(config=SimpleNamespace(recordings_dir=recordings))  # type: ignore[return-value]


def break_directory(recordings: Path) -> None:
    """The recordings path stops taking files (a probe there fails: not a directory)."""
    recordings.rmdir()
    recordings.write_text("")


@pytest.fixture
def recordings(tmp_path: Path) -> Path:
    path = tmp_path / "recordings"
    path.mkdir()
    return path


async def test_a_passed_probe_stands_for_a_second(recordings: Path) -> None:
    ctx, node = context(recordings), NodeState()
    assert await new_session_refusal(ctx, node) is None
    assert node.probed_at is not None and list(recordings.iterdir()) == []
    break_directory(recordings)
    assert await new_session_refusal(ctx, node) is None  # the probe just passed stands
    node.probed_at -= PROBE_FRESH  # a second later: probed again, and refused
    refusal = await new_session_refusal(ctx, node)
    assert refusal is not None and "cannot record sessions right now (Not a directory)" in refusal
    assert node.recording_error == "Not a directory" and node.probed_at is None
    recordings.unlink()
    recordings.mkdir()
    assert await new_session_refusal(ctx, node) is None  # a failed node probes every time
    assert node.recording_error is None


async def test_a_recording_failure_ends_a_passed_probe_at_once(recordings: Path) -> None:
    ctx, node = context(recordings), NodeState()
    assert await new_session_refusal(ctx, node) is None
    break_directory(recordings)
    node.recording_failed("No space left on device")  # the flusher reported a write
    refusal = await new_session_refusal(ctx, node)
    assert refusal is not None and "(Not a directory)" in refusal


async def test_without_a_node_every_session_probes(recordings: Path) -> None:
    ctx = context(recordings)
    assert await new_session_refusal(ctx, None) is None
    break_directory(recordings)
    assert await new_session_refusal(ctx, None) is not None
