"""Where a relayed channel's bytes go besides the other side: the recorder's taps, each
also counted for ``/metrics``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from broker import metrics


def ignore(_data: bytes) -> None:
    return None


def ignore_resize(_width: int, _height: int) -> None:
    return None


@dataclass
class Taps:
    """Where a channel's bytes go besides the other side."""

    from_client: Callable[[bytes], None]
    stdout: Callable[[bytes], None]
    stderr: Callable[[bytes], None]
    finish: Callable[[int | None, str | None], None]
    resize: Callable[[int, int], None] = ignore_resize


def counted(taps: Taps) -> Taps:
    """The same taps, each also counting the chunk's bytes for ``/metrics`` (per chunk)."""
    to_device, from_device = metrics.SSH_TO_DEVICE.inc, metrics.SSH_FROM_DEVICE.inc
    from_client, stdout, stderr = taps.from_client, taps.stdout, taps.stderr

    def client_chunk(data: bytes) -> None:
        to_device(len(data))
        from_client(data)

    def stdout_chunk(data: bytes) -> None:
        from_device(len(data))
        stdout(data)

    def stderr_chunk(data: bytes) -> None:
        from_device(len(data))
        stderr(data)

    return Taps(client_chunk, stdout_chunk, stderr_chunk, taps.finish, taps.resize)
