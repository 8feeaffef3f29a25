"""The files of a session's recording: which recorder wrote each, found in one place.

Every channel of a session is recorded by one :class:`Recorder` into one file named
``KIND-CHANNEL[-N]SUFFIX`` (``term-0.cast``, ``exec-1.jsonl``, ``sftp-2-2.jsonl`` when channel
number 2 was used twice); a web session has one ``web.har``. The player, Watch, search and
``broker replay`` all find them with :func:`recorded_files`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol


class Kind(StrEnum):
    """What a recorder records; the value is its files' name prefix."""

    TERMINAL = "term"  # asciicast v2: a shell or a command with a PTY
    EXEC = "exec"  # a command without a PTY: stdin, stdout, stderr, exit (JSON lines)
    SFTP = "sftp"  # SFTP operations, with the hash of every file moved (JSON lines)
    SCP = "scp"  # legacy scp, likewise
    FORWARD = "forward"  # a port forward's bytes each way (JSON lines)
    WEB = "web"  # a web session's requests and WebSocket frames (HAR 1.2)
    WEBSOCKET = "websocket"  # one WebSocket's frames (JSON lines; the HAR names the file)

    @property
    def suffix(self) -> str:
        return {Kind.TERMINAL: ".cast", Kind.WEB: ".har"}.get(self, ".jsonl")


class Recorder(Protocol):
    """What every recorder is to the session that owns it: one file, closed once."""

    @property
    def path(self) -> Path: ...

    def close(self) -> None: ...


def file_stem(kind: Kind, channel: int | None = None) -> str:
    """The name (without suffix) a recorder of ``kind`` asks the session for."""
    return kind.value if channel is None else f"{kind.value}-{channel}"


@dataclass(frozen=True)
class RecordedFile:
    path: Path
    kind: Kind
    channel: int | None  # None for a web session's HAR

    @property
    def name(self) -> str:
        return self.path.name


_NAME = re.compile(r"(?P<kind>[a-z]+)(?:-(?P<channel>\d+)(?:-\d+)?)?(?P<suffix>\.[a-z]+)")
_WEB_ORDER = 1 << 30  # a web session's HAR comes after any channel


def recorded_file(path: Path) -> RecordedFile | None:
    """What ``path`` is, if a recorder wrote it (None for the seal, metadata and the rest)."""
    match = _NAME.fullmatch(path.name)
    if match is None:
        return None
    try:
        kind = Kind(match["kind"])
    except ValueError:
        return None
    channel = match["channel"]
    if match["suffix"] != kind.suffix or (channel is None) != (kind is Kind.WEB):
        return None
    return RecordedFile(path, kind, None if channel is None else int(channel))


def recorded_files(directory: Path, *, kinds: frozenset[Kind] | None = None,
                   channel: int | None = None) -> list[RecordedFile]:
    """A session directory's recorded files in channel order (then by name), optionally only
    some kinds or one channel; an absent directory has none."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if not path.is_file() or path.is_symlink():
            continue
        recorded = recorded_file(path)
        if recorded is None or (kinds is not None and recorded.kind not in kinds):
            continue
        if channel is not None and recorded.channel != channel:
            continue
        order = _WEB_ORDER if recorded.channel is None else recorded.channel
        found.append((order, path.name, recorded))
    return [recorded for *_, recorded in sorted(found)]


TERMINALS = frozenset({Kind.TERMINAL})
REPLAYED = frozenset(Kind) - {Kind.WEBSOCKET}  # a WebSocket's frames replay within the HAR


if TYPE_CHECKING:  # every recorder is a Recorder
    from .asciicast import AsciicastWriter, ExecLog
    from .forward import ForwardLog
    from .har import HarWriter, WebSocketLog
    from .scp import SCPRecorder
    from .sftp import SFTPRecorder

    def _recorders(*recorders: Recorder) -> None: ...

    def _conform(a: AsciicastWriter, e: ExecLog, f: ForwardLog, h: HarWriter,
                 w: WebSocketLog, c: SCPRecorder, s: SFTPRecorder) -> None:
        _recorders(a, e, f, h, w, c, s)
