"""The SFTP wire format (draft-ietf-secsh-filexfer-02 .. -13): packet types, status codes,
limits and the few field parsers the recorder and the relay's file-rule guard share."""

from __future__ import annotations

import struct

from .oplog import decode_path

# Packet types (draft-ietf-secsh-filexfer-02 .. -13).
INIT, VERSION, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT = 1, 2, 3, 4, 5, 6, 7, 8
SETSTAT, FSETSTAT, OPENDIR, READDIR, REMOVE, MKDIR, RMDIR = 9, 10, 11, 12, 13, 14, 15
REALPATH, STAT, RENAME, READLINK, SYMLINK, LINK, BLOCK, UNBLOCK = 16, 17, 18, 19, 20, 21, 22, 23
EXTENDED = 200
STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED_REPLY = 101, 102, 103, 104, 105, 201

_REPLY_TYPES = frozenset({STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED_REPLY})

FX_OK, FX_EOF = 0, 1
_STATUS_NAMES = (
    "ok", "eof", "no_such_file", "permission_denied", "failure", "bad_message",
    "no_connection", "connection_lost", "op_unsupported", "invalid_handle", "no_such_path",
    "file_already_exists", "write_protect", "no_media", "no_space_on_filesystem",
    "quota_exceeded", "unknown_principal", "lock_conflict", "dir_not_empty", "not_a_directory",
    "invalid_filename", "link_loop", "cannot_delete", "invalid_parameter", "file_is_a_directory",
    "byte_range_lock_conflict", "byte_range_lock_refused", "delete_pending", "file_corrupt",
    "owner_invalid", "group_invalid", "no_matching_byte_range_lock",
)

# Access bits: v3 pflags READ=1 WRITE=2 APPEND=4; v5+ ACE4 READ_DATA=1 WRITE_DATA=2 APPEND=4.
_ACCESS_READ = 0x1
_ACCESS_WRITE = 0x2 | 0x4

#: OpenSSH's limit (256 KiB) plus room for the request header.
DEFAULT_MAX_PACKET = 256 * 1024 + 1024
#: Servers may advertise larger packets (limits@openssh.com; asyncssh: 4 MiB): never beyond.
HARD_MAX_PACKET = 4 * 1024 * 1024 + 1024

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_II = struct.Struct(">II")
_QI = struct.Struct(">QI")

# Request layout per SFTP version, by operation name -> logged op names.
_PATH_OPS = {LSTAT: "lstat", STAT: "stat", REMOVE: "remove", RMDIR: "rmdir",
             REALPATH: "realpath", READLINK: "readlink", SETSTAT: "setstat", MKDIR: "mkdir"}
_EXT_PATH = frozenset({"statvfs@openssh.com", "lsetstat@openssh.com", "expand-path@openssh.com",
                       "check-file-name", "space-available", "make-temp-folder"})
_EXT_TWO_PATHS = frozenset({"posix-rename@openssh.com", "hardlink@openssh.com", "copy-file"})
_EXT_HANDLE = frozenset({"fstatvfs@openssh.com", "fsync@openssh.com", "check-file-handle"})
_RESOLVING = frozenset({"realpath", "readlink", "expand-path@openssh.com"})


class _ProtocolError(Exception):
    pass


def _string(pkt: memoryview, pos: int) -> tuple[memoryview, int]:
    n = _U32.unpack_from(pkt, pos)[0]
    end = pos + 4 + n
    if end > len(pkt):
        raise _ProtocolError(f"string of {n} bytes runs past the end of the packet")
    return pkt[pos + 4:end], end


def _path(pkt: memoryview, pos: int) -> tuple[str, int]:
    raw, end = _string(pkt, pos)
    return decode_path(raw), end


def _status(pkt: memoryview) -> tuple[int, str]:
    """(code, result text) of a STATUS reply."""
    code = _U32.unpack_from(pkt, 5)[0]
    if code == FX_OK:
        return code, "ok"
    name = _STATUS_NAMES[code] if code < len(_STATUS_NAMES) else f"status_{code}"
    try:
        message = decode_path(_string(pkt, 9)[0]).strip()
    except (struct.error, _ProtocolError):  # v3 servers may omit the message
        message = ""
    return code, f"{name}: {message}" if message else name


def _attrs_v3(pkt: memoryview, pos: int) -> dict[str, object]:
    """The interesting parts of v3 ATTRS (for setstat/mkdir lines); {} if unparsable."""
    try:
        flags = _U32.unpack_from(pkt, pos)[0]
        pos += 4
        out: dict[str, object] = {}
        if flags & 0x1:
            out["size"] = _U64.unpack_from(pkt, pos)[0]
            pos += 8
        if flags & 0x2:
            out["uid"], out["gid"] = _II.unpack_from(pkt, pos)
            pos += 8
        if flags & 0x4:
            out["permissions"] = f"{_U32.unpack_from(pkt, pos)[0] & 0o7777:04o}"
            pos += 4
        if flags & 0x8:
            out["atime"], out["mtime"] = _II.unpack_from(pkt, pos)
        return out
    except struct.error:
        return {}
