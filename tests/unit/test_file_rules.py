"""File transfer rules (issue #21): the pure decisions, the policy format, and the guards'
packet handling in every chunking (the end-to-end tests with real clients are in
tests/security/test_file_rules.py)."""

from __future__ import annotations

import struct
from pathlib import Path
from textwrap import dedent

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.file_rules import FileRules, Transfer, format_size, normalise, parse_size
from broker.domain.policy import DEFAULT_POLICY, DeviceFacts, TechnicianFacts
from broker.domain.scp_command import ScpCommand
from broker.policy import check_policies, load_policies
from broker.policy.explain import explain, explain_json
from broker.ssh.scp_guard import ScpGuard, direction_refusal
from broker.ssh.sftp_frames import FrameError, Framer
from broker.ssh.sftp_guard import SFTPGuard

RULES = FileRules(max_size=1000, deny_names=("*.exe", "secret*"),
                  paths=("/var/log/**", "/opt/firmware/*"))


# -- sizes and paths -----------------------------------------------------------------------

@pytest.mark.parametrize(("text", "size"), [("500M", 500 * 2**20), ("2g", 2 * 2**30),
                                            ("64K", 65536), ("10 KiB", 10240), ("1", 1),
                                            (4096, 4096), ("1T", 2**40)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "5Q", "-1", "0", "1.5G", "M", True, None, [1]])
def test_bad_sizes_are_one_line(text):
    with pytest.raises(ValueError, match="size") as info:
        parse_size(text)
    assert "\n" not in str(info.value)


def test_format_size():
    assert [format_size(n) for n in (500 * 2**20, 65536, 1000, 2**30)] == \
        ["500M", "64K", "1000", "1G"]


@pytest.mark.parametrize(("path", "home", "expected"), [
    ("/var/log/../../etc/passwd", None, "/etc/passwd"),
    ("//var//log/./x", None, "/var/log/x"),
    ("x/../../..", "/home/u", "/"),
    ("logs/a", "/home/u", "/home/u/logs/a"),
    ("logs/a", None, None),
    ("/var/log/", None, "/var/log"),
])
def test_normalise(path, home, expected):
    assert normalise(path, home) == expected


def test_default_rules_allow_everything_and_add_nothing():
    assert DEFAULT_POLICY.rules.files == FileRules()
    assert FileRules().unrestricted
    assert FileRules().check(Transfer.UPLOAD, "relative/evil.exe") is None
    assert not RULES.unrestricted


@pytest.mark.parametrize("name", ["a.exe", "A.EXE", "a.Exe", "a.exe.", "a.exe ", "Secret.TXT"])
def test_denied_names_any_case(name):
    problem = RULES.check(Transfer.UPLOAD, f"/var/log/{name}")
    assert problem is not None and "deny_names" in problem


@pytest.mark.parametrize(("path", "allowed"), [
    ("/var/log/a", True), ("/var/log/a/b/c.txt", True), ("/var/log", False),
    ("/var/logs/a", False), ("/var/log/../shadow", False), ("/opt/firmware/x.bin", True),
    ("/opt/firmware/sub/x.bin", False), ("/opt/firmware/../../etc/x", False),
    ("/etc/passwd", False), ("relative.txt", False),
])
def test_paths(path, allowed):
    assert (RULES.check(Transfer.DOWNLOAD, path) is None) is allowed


def test_relative_paths_resolve_against_the_home_directory():
    assert RULES.check(Transfer.UPLOAD, "../../var/log/x", "/home/u") is None
    problem = RULES.check(Transfer.UPLOAD, "x", None)
    assert problem is not None and "absolute path" in problem


def test_glob_classes_and_question_marks():
    rules = FileRules(paths=("/data/[ab]?/*.log", "/x/[!z]*"))
    assert rules.path_allowed("/data/a1/one.log")
    assert not rules.path_allowed("/data/c1/one.log")
    assert not rules.path_allowed("/data/a1/sub/one.log")
    assert rules.path_allowed("/x/y") and not rules.path_allowed("/x/z")


def test_directions_and_sizes():
    rules = FileRules(upload=False, max_size=10)
    assert "uploads" in (rules.check(Transfer.UPLOAD, "/a") or "")
    assert "uploads" in (rules.check(Transfer.CHANGE, "/a") or "")
    assert rules.check(Transfer.DOWNLOAD, "/a", size=10) is None
    assert "exceed the limit of 10" in (rules.check(Transfer.DOWNLOAD, "/a", size=11) or "")
    assert "downloads" in (FileRules(download=False).check(Transfer.DOWNLOAD, "/a") or "")


@pytest.mark.parametrize("bad", [{"paths": ("var/log",)}, {"paths": ("/a/../b",)},
                                 {"deny_names": ("a/b",)}, {"deny_names": ("",)},
                                 {"max_size": 0}])
def test_bad_rules_are_refused(bad):
    with pytest.raises(ValueError):
        FileRules(**bad)


# -- the policy file -----------------------------------------------------------------------

def write(directory: Path, text: str) -> None:
    (directory / "p.yaml").write_text(dedent(text).lstrip("\n"), encoding="utf-8")


def test_files_in_a_policy(tmp_path):
    write(tmp_path, """
        policies:
          - name: vendor-files
            files:
              upload: deny
              max_size: 500M
              deny_names: ["*.exe"]
              paths: ["/var/log/**", "/opt/firmware/*"]
          - name: plain
    """)
    strict, plain = load_policies(tmp_path)
    assert strict.rules.files == FileRules(upload=False, max_size=500 * 2**20,
                                           deny_names=("*.exe",),
                                           paths=("/var/log/**", "/opt/firmware/*"))
    assert plain.rules.files == FileRules()
    tech = TechnicianFacts("t", "Acme")
    device = DeviceFacts("d", frozenset(), None, "active")
    text = explain([strict], tech, device)
    assert ("File transfers: upload denied; download allowed; at most 500M per file; names"
            " denied: *.exe; only under: /var/log/**, /opt/firmware/*") in text
    files = explain_json([strict], tech, device)["policy"]["rules"]["files"]
    assert files == {"upload": "deny", "download": "allow", "max_size": "500M",
                     "deny_names": ["*.exe"], "paths": ["/var/log/**", "/opt/firmware/*"]}
    assert "File transfers: no restrictions" in explain([plain], tech, device)


@pytest.mark.parametrize(("body", "line", "field", "message"), [
    ("upload: maybe", 4, "files.upload", "expected 'allow' or 'deny', got 'maybe'"),
    ("download: yes", 4, "files.download", "expected 'allow' or 'deny', got True"),
    ("max_size: 5Q", 4, "files.max_size", "'5Q' is not a size"),
    ("max_size: 0", 4, "files.max_size", "at least 1 byte"),
    ("deny_names: ['a/b']", 4, "files.deny_names[0]", "without '/'"),
    ("deny_names: '*.exe'", 4, "files.deny_names", "expected a list"),
    ("paths: ['var/log/**']", 4, "files.paths[0]", "must be absolute"),
    ("paths: ['/var/../etc']", 4, "files.paths[0]", "'..'"),
    ("paths: []", 4, "files.paths", "empty list"),
    ("uplaod: deny", 4, "files.uplaod", "unknown field 'uplaod' (did you mean 'upload'?)"),
])
def test_bad_files_values_are_one_line_each(tmp_path, body, line, field, message):
    write(tmp_path, f"""
        policies:
          - name: p
            files:
              {body}
    """)
    problems = check_policies(tmp_path)
    assert len(problems) == 1, problems
    text = str(problems[0])
    assert "\n" not in text
    assert text.startswith(f"{tmp_path}/p.yaml:{line}: policies[0].{field}:"), text
    assert message in text


# -- SFTP guard ----------------------------------------------------------------------------

def packet(kind: int, *parts: bytes) -> bytes:
    body = bytes([kind]) + b"".join(parts)
    return struct.pack(">I", len(body)) + body


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def s(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return u32(len(raw)) + raw


INIT = packet(1, u32(3))
VERSION = packet(2, u32(3))


def open_(rid: int, path: str, flags: int) -> bytes:
    return packet(3, u32(rid), s(path), u32(flags), u32(0))


def write_(rid: int, handle: bytes, offset: int, data: bytes) -> bytes:
    return packet(6, u32(rid), s(handle), struct.pack(">Q", offset), s(data))


def handle_reply(rid: int, handle: bytes) -> bytes:
    return packet(102, u32(rid), s(handle))


def status_code(pkt: bytes) -> tuple[int, int, str]:
    rid, code, n = struct.unpack_from(">III", pkt, 5)
    return rid, code, pkt[17:17 + n].decode()


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for point in [*points, len(data)]:
        out.append(data[last:point])
        last = point
    return [c for c in out if c]


class Session:
    """Feeds a guard like the relay does; collects what each side received."""

    def __init__(self, rules: FileRules) -> None:
        self.refused: list[tuple[str, str, str]] = []
        self.guard = SFTPGuard(rules, lambda *r: self.refused.append(r))
        self.to_device = bytearray()
        self.to_client = bytearray()

    def client(self, data: bytes, cuts: list[int] | None = None) -> None:
        for chunk in chunks(data, cuts or []):
            for piece in self.guard.from_client(chunk):
                self.to_device += piece
            for reply in self.guard.replies_to_client():
                self.to_client += reply

    def server(self, data: bytes, cuts: list[int] | None = None) -> None:
        for chunk in chunks(data, cuts or []):
            for piece in self.guard.from_server(chunk):
                self.to_client += piece


def test_an_upload_open_is_answered_by_the_broker_and_never_forwarded():
    session = Session(FileRules(upload=False))
    session.client(INIT)
    session.server(VERSION)
    session.client(open_(7, "/var/log/x", 0x1A) + open_(8, "/var/log/y", 0x1))
    assert session.to_device == INIT + open_(8, "/var/log/y", 0x1)
    rid, code, message = status_code(bytes(session.to_client[len(VERSION):]))
    assert (rid, code) == (7, 3)
    assert message.startswith("broker: upload of '/var/log/x' refused by policy")
    assert session.refused[0][1:] == ("upload", "/var/log/x", "file.denied")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 400), max_size=8), st.lists(st.integers(0, 400), max_size=8))
def test_any_chunking_gives_the_same_streams(client_cuts, server_cuts):
    """Writes pass, a write beyond max_size, a denied rename and an injected reply in the
    middle of a server packet come out the same in every chunking."""
    rules = FileRules(max_size=100, deny_names=("*.exe",))
    session = Session(rules)
    session.client(INIT, client_cuts)
    session.server(VERSION, server_cuts)
    session.client(open_(1, "/a.txt", 0x1A), client_cuts)
    session.server(handle_reply(1, b"H1"), server_cuts)
    stream = (write_(2, b"H1", 0, b"x" * 60) + write_(3, b"H1", 60, b"y" * 40)
              + write_(4, b"H1", 100, b"z")
              + packet(18, u32(5), s("/a.txt"), s("/b.EXE")))
    session.client(stream, client_cuts)
    session.server(packet(101, u32(2), u32(0), s(""), s("")), server_cuts)
    assert session.to_device == INIT + open_(1, "/a.txt", 0x1A) + stream[:len(
        write_(2, b"H1", 0, b"x" * 60) + write_(3, b"H1", 60, b"y" * 40))]
    replies = bytes(session.to_client)
    assert replies.startswith(VERSION + handle_reply(1, b"H1"))
    ids = []
    pos = len(VERSION + handle_reply(1, b"H1"))
    while pos < len(replies):
        length = struct.unpack_from(">I", replies, pos)[0]
        pkt = replies[pos:pos + 4 + length]
        ids.append(status_code(pkt)[:2])
        pos += 4 + length
    assert sorted(ids) == [(2, 0), (4, 3), (5, 3)]
    assert [r[1] for r in session.refused] == ["write", "rename"]


def test_a_download_is_cut_at_max_size():
    session = Session(FileRules(max_size=10))
    session.client(INIT)
    session.server(VERSION)
    session.client(open_(1, "/f", 0x1))
    session.server(handle_reply(1, b"H"))
    session.client(packet(5, u32(2), s(b"H"), struct.pack(">Q", 0), u32(8))
                   + packet(5, u32(3), s(b"H"), struct.pack(">Q", 8), u32(8)))
    session.server(packet(103, u32(2), s(b"a" * 8)) + packet(103, u32(3), s(b"b" * 8)))
    tail = bytes(session.to_client[len(VERSION + handle_reply(1, b"H")):])
    assert tail.startswith(packet(103, u32(2), s(b"a" * 8)))
    rid, code, message = status_code(tail[len(packet(103, u32(2), s(b"a" * 8))):])
    assert (rid, code) == (3, 3) and "exceed the limit of 10" in message


def test_writes_to_unknown_handles_and_unknown_requests_fail_closed():
    session = Session(FileRules(deny_names=("*.exe",)))
    session.client(INIT)
    session.server(VERSION)
    session.client(write_(1, b"nope", 0, b"data") + packet(200, u32(2), s("evil@example.com"))
                   + packet(99, u32(3)))
    assert session.to_device == INIT
    assert [r[1] for r in session.refused] == ["write", "extension", "type-99"]


def test_a_bad_packet_length_stops_the_stream():
    framer = Framer(lambda head: 5, lambda head: True)
    with pytest.raises(FrameError):
        framer.feed(u32(2**31) + b"\x01" * 10)


def test_a_whole_chunk_passes_as_the_same_object():
    session = Session(FileRules(max_size=10**9))
    session.client(INIT)
    session.server(VERSION)
    session.client(open_(1, "/f", 0x1A))
    session.server(handle_reply(1, b"H"))
    chunk = write_(2, b"H", 0, b"q" * 5000) * 3
    assert session.guard.from_client(chunk)[0] is chunk


# -- legacy scp guard ----------------------------------------------------------------------

def test_scp_direction_refusals():
    upload, download = ScpCommand(True, "/x"), ScpCommand(False, "/x")
    assert "uploads are not allowed" in (direction_refusal(FileRules(upload=False), upload) or "")
    assert direction_refusal(FileRules(upload=False), download) is None
    assert "downloads" in (direction_refusal(FileRules(download=False), download) or "")


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=6))
def test_scp_upload_refuses_a_denied_file_and_passes_the_next(cuts):
    refused: list[tuple[str, str, str]] = []
    guard = ScpGuard(FileRules(deny_names=("*.exe",), max_size=50),
                     ScpCommand(True, "/up/"), lambda *r: refused.append(r))
    to_device, to_client = bytearray(), bytearray()

    def client(data: bytes) -> None:
        for chunk in chunks(data, cuts):
            for piece in guard.from_client(chunk):
                to_device.extend(piece)
            for reply in guard.replies_to_client():
                to_client.extend(reply)

    guard.from_server(b"\0")
    client(b"C0644 5 bad.exe\n")
    assert to_client.startswith(b"\x01broker: ") and b"deny_names" in to_client
    to_client.clear()
    client(b"C0644 51 big.bin\n")
    assert b"exceed the limit of 50" in to_client
    client(b"C0644 5 ok.txt\n")
    guard.from_server(b"\0")
    client(b"E\nx\n\0")  # file data that looks like records passes untouched
    assert bytes(to_device) == b"C0644 5 ok.txt\nE\nx\n\0"
    assert [r[2] for r in refused] == ["bad.exe", "big.bin"]


def test_scp_download_answers_both_sides():
    guard = ScpGuard(FileRules(deny_names=("*.exe",)), ScpCommand(False, "/d", recursive=True),
                     lambda *r: None)
    assert guard.from_client(b"\0") == [b"\0"]
    assert guard.from_server(b"D0755 0 d\n") == [b"D0755 0 d\n"]
    guard.from_client(b"\0")
    assert guard.from_server(b"C0644 3 v.exe\n") == []
    assert guard.replies_to_device()[0].startswith(b"\x01broker: ")
    assert guard.replies_to_client()[0].startswith(b"\x01broker: ")
