"""Session recordings: writers (asciicast v2, exec logs), crash-safe flushing, reading, replay."""

from .asciicast import AsciicastWriter, ExecLog
from .flusher import FlushedFile, Flusher, default_flusher
from .reader import (
    Cast,
    CastError,
    RecordingError,
    SessionInfo,
    iter_sessions,
    output_text,
    read_cast,
)
from .replay import frames, replay
from .session import SessionRecording

__all__ = [
    "AsciicastWriter",
    "Cast",
    "CastError",
    "ExecLog",
    "FlushedFile",
    "Flusher",
    "RecordingError",
    "SessionInfo",
    "SessionRecording",
    "default_flusher",
    "frames",
    "iter_sessions",
    "output_text",
    "read_cast",
    "replay",
]

from .manifest import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Signer,
    seal_directory,
    seal_interrupted,
    signer_for,
)
from .oplog import OpLog
from .scp import SCPCommand, SCPRecorder, is_scp_command, parse_scp_command
from .sftp import SFTPRecorder
from .verify import verify_all, verify_session

__all__ += [
    "OpLog",
    "SCPCommand",
    "SCPRecorder",
    "SFTPRecorder",
    "is_scp_command",
    "parse_scp_command",
]

__all__ += [
    "MANIFEST_FILE",
    "SIGNATURE_FILE",
    "Signer",
    "seal_directory",
    "seal_interrupted",
    "signer_for",
    "verify_all",
    "verify_session",
]
