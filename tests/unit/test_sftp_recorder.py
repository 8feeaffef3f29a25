"""SFTP recorder: real protocol bytes through a tee relay, plus chunking, ordering and garbage.

The relay here is the shape the broker uses: an asyncssh server accepting the ``sftp`` subsystem,
pumping bytes unchanged to an upstream (an asyncssh device with a chrooted SFTP server, or
OpenSSH's own ``sftp-server`` as a subprocess) and feeding copies to :class:`SFTPRecorder`.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from asyncssh.constants import EXTENDED_DATA_STDERR
from asyncssh.sftp import MIN_SFTP_VERSION
from asyncssh.stream import SSHReader, SSHWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.aio import within
from broker.recording import Flusher
from broker.recording.sftp import SFTPRecorder
from tests.unit.recorder_kit import (
    DEVICE_PASSWORD,
    SSH_OPTIONS,
    read_log,
    rechunk,
    sha,
    start_device,
)

SFTP_SERVER = Path("/usr/lib/openssh/sftp-server")

needs_openssh = pytest.mark.skipif(
    shutil.which("sftp") is None or not SFTP_SERVER.exists(),
    reason="OpenSSH sftp client / sftp-server not installed")


# -- helpers ------------------------------------------------------------------------------




STEPS = (1, 3, 4, 5, 9, 13, 100, 4096, 40_000, 1 << 20)

def strip_times(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k not in ("t", "opened")} for line in lines]





def only(lines: list[dict], **match: object) -> dict:
    found = [line for line in lines if all(line.get(k) == v for k, v in match.items())]
    assert len(found) == 1, (match, found)
    return found[0]


# SFTP packet builders for the hand-made streams.
def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def s(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return u32(len(raw)) + raw


def packet(kind: int, *fields: bytes) -> bytes:
    body = bytes([kind]) + b"".join(fields)
    return u32(len(body)) + body


INIT = packet(1, u32(3))
VERSION = packet(2, u32(3), s("posix-rename@openssh.com"), s("1"))


def status(rid: int, code: int = 0, message: str = "") -> bytes:
    return packet(101, u32(rid), u32(code), s(message), s(""))


# -- the tee relay --------------------------------------------------------------------------

class Upstream:
    """The device end of a relayed channel: an asyncssh client process or a subprocess."""

    def __init__(self, write: Callable[[bytes], None], drain: Callable[[], Awaitable[None]],
                 eof: Callable[[], None], read: Callable[[], Awaitable[bytes]],
                 wait: Callable[[], Awaitable[int]]) -> None:
        self.write, self.drain, self.eof, self.read, self.wait = write, drain, eof, read, wait


@dataclass
class Session:
    log: Path
    events: list[tuple[str, bytes]]  # ("c" | "s", chunk) in the order the recorder saw them


class TeeProcess(asyncssh.SSHServerProcess):
    """A process session that hands the ``sftp`` subsystem to our handler (asyncssh's own
    session accepts it only for a local SFTP server), as the broker's relay does."""

    def __init__(self, handler: Callable[[asyncssh.SSHServerProcess], Awaitable[None]]) -> None:
        super().__init__(handler, None, MIN_SFTP_VERSION, False)

    def subsystem_requested(self, subsystem: str) -> bool:
        return True

    def session_started(self) -> None:
        chan, conn = self._chan, self._conn
        stdin = SSHReader(self, chan)
        stdout = SSHWriter(self, chan)
        stderr = SSHWriter(self, chan, EXTENDED_DATA_STDERR)
        conn.create_task(self._start_process(stdin, stdout, stderr), stdin.logger)


class Relay:
    """An asyncssh server that relays the ``sftp`` subsystem to an upstream and records it."""

    def __init__(self, directory: Path, flusher: Flusher,
                 upstream: Callable[[], Awaitable[Upstream]], symlink_target_first: bool) -> None:
        self.dir = directory
        self.flusher = flusher
        self.upstream = upstream
        self.symlink_target_first = symlink_target_first
        self.sessions: asyncio.Queue[Session] = asyncio.Queue()
        self.port = 0
        self._n = 0

    async def start(self) -> None:
        handler = self._session

        class Open(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                return False  # the broker's auth is tested elsewhere

            def session_requested(self) -> asyncssh.SSHServerProcess:
                return TeeProcess(handler)

        self.server = await asyncssh.listen(
            "127.0.0.1", 0, server_factory=Open,
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")], encoding=None,
            line_editor=False, agent_forwarding=False, allow_scp=False)
        self.port = self.server.sockets[0].getsockname()[1]

    async def next_session(self) -> Session:
        return await within(10, self.sessions.get())

    async def _session(self, process: asyncssh.SSHServerProcess) -> None:
        if process.subsystem != "sftp":
            process.exit(1)
            return
        self._n += 1
        recorder = SFTPRecorder(self.dir / f"sftp-{self._n}.jsonl", flusher=self.flusher,
                                symlink_target_first=self.symlink_target_first)
        events: list[tuple[str, bytes]] = []
        up = await self.upstream()

        async def to_device() -> None:
            while data := await process.stdin.read(65536):
                events.append(("c", data))
                recorder.from_client(data)  # before the device can answer it
                up.write(data)
                await up.drain()
            up.eof()

        async def to_client() -> None:
            while data := await up.read():
                events.append(("s", data))
                recorder.from_server(data)
                process.stdout.write(data)
                await process.stdout.drain()

        pump = asyncio.create_task(to_device())
        await to_client()
        status = await up.wait()
        if not pump.done():
            pump.cancel()
        recorder.close()
        self.sessions.put_nowait(Session(recorder.path, events))
        process.exit(status)





@pytest.fixture
async def flusher():
    f = Flusher(interval=3600)
    yield f
    await f.stop()


@pytest.fixture
def device_root(tmp_path: Path) -> Path:
    root = tmp_path / "device"
    root.mkdir()
    return root


async def asyncssh_upstream(port: int) -> Callable[[], Awaitable[Upstream]]:
    async def connect() -> Upstream:
        conn = await asyncssh.connect("127.0.0.1", port, username="svc",
                                      password=DEVICE_PASSWORD, known_hosts=None,
                                      client_keys=None, agent_path=None)
        proc = await conn.create_process(subsystem="sftp", encoding=None)

        async def wait() -> int:
            done = await proc.wait(check=False)
            conn.close()
            return done.exit_status or 0

        return Upstream(proc.stdin.write, proc.stdin.drain, proc.stdin.write_eof,
                        lambda: proc.stdout.read(65536), wait)
    return connect


def openssh_upstream(root: Path) -> Callable[[], Awaitable[Upstream]]:
    async def start() -> Upstream:
        proc = await asyncio.create_subprocess_exec(
            str(SFTP_SERVER), "-d", str(root), "-e", "-l", "QUIET",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        stdin, stdout = proc.stdin, proc.stdout
        return Upstream(stdin.write, stdin.drain, stdin.close, lambda: stdout.read(65536),
                        proc.wait)
    return start


@pytest.fixture(params=["asyncssh-device", "openssh-sftp-server"])
async def relay(request, tmp_path: Path, device_root: Path, flusher: Flusher):
    device = None
    if request.param == "asyncssh-device":
        device = await start_device(device_root, sftp_version=6)
        upstream = await asyncssh_upstream(device.sockets[0].getsockname()[1])
        # asyncssh talking to asyncssh uses the draft's SYMLINK order (link, target).
        target_first = False
    else:
        if not SFTP_SERVER.exists():
            pytest.skip("OpenSSH sftp-server is not installed")
        upstream = openssh_upstream(device_root)
        target_first = True
    (tmp_path / "logs").mkdir()
    r = Relay(tmp_path / "logs", flusher, upstream, target_first)
    r.kind = request.param  # type: ignore[attr-defined]
    await r.start()
    yield r
    r.server.close()
    if device is not None:
        device.close()


def make_files(directory: Path, sizes: dict[str, int], seed: int = 7) -> dict[str, bytes]:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, size in sizes.items():
        data = rng.randbytes(size)
        (directory / name).write_bytes(data)
        out[name] = data
    return out


SIZES = {"empty.bin": 0, "one.bin": 1, "odd.bin": 70_001, "big.bin": 5 * 1024 * 1024}


# -- through the relay: asyncssh's SFTP client ---------------------------------------------

@pytest.mark.parametrize("version", [3, 6])
async def test_asyncssh_client_transfers_are_logged_with_hashes(
        relay: Relay, tmp_path: Path, device_root: Path, version: int) -> None:
    if version == 6 and relay.kind != "asyncssh-device":  # type: ignore[attr-defined]
        pytest.skip("OpenSSH's sftp-server speaks SFTP v3 only")
    files = make_files(tmp_path / "local", SIZES)
    back = tmp_path / "back"
    back.mkdir()
    async with (
        asyncssh.connect("127.0.0.1", relay.port, username="tech+device", known_hosts=None,
                         client_keys=None, agent_path=None) as conn,
        conn.start_sftp_client(sftp_version=version) as sftp,
    ):
        await sftp.mkdir("up")
        for name in files:
            # a small block size forces many pipelined WRITEs/READs per file
            await sftp.put(str(tmp_path / "local" / name), f"up/{name}",
                           block_size=16384 if name == "odd.bin" else -1)
        for name in files:
            await sftp.get(f"up/{name}", str(back / name))
        listing = await sftp.listdir("up")
        await sftp.rename("up/one.bin", "up/renamed.bin")
        if relay.kind == "asyncssh-device":  # type: ignore[attr-defined]
            # (asyncssh's client, seeing an asyncssh relay, uses the draft's argument
            # order, which OpenSSH's sftp-server reads the other way round)
            await sftp.symlink("renamed.bin", "up/link")
        await sftp.remove("up/empty.bin")
        with pytest.raises(asyncssh.SFTPNoSuchFile):
            await sftp.remove("up/no-such-file")
        await sftp.mkdir("up/sub")
        await sftp.rmdir("up/sub")
    session = await relay.next_session()
    lines = read_log(session.log)

    # The relay passed everything through unchanged.
    for name, data in files.items():
        assert (back / name).read_bytes() == data
    assert (device_root / "up" / "renamed.bin").read_bytes() == files["one.bin"]

    assert lines[0]["op"] == "version" and lines[0]["version"] == version
    assert only(lines, op="mkdir", path="up")["result"] == "ok"
    for name, data in files.items():
        up = only(lines, op="upload", path=f"up/{name}")
        assert up["bytes_written"] == len(data) and up["bytes_read"] == 0
        assert up["sha256_written"] == sha(data)
        assert "sha256_read" not in up and up["result"] == "ok"
        if version == 3:  # pflags WRITE
            assert up["mode"] & 0x2 and "access" not in up
        else:  # v5+: flags, and ACE4 desired access WRITE_DATA
            assert up["access"] & 0x2 and not up["access"] & 0x1
        down = only(lines, op="download", path=f"up/{name}")
        assert down["bytes_read"] == len(data) and down["bytes_written"] == 0
        assert down["sha256_read"] == sha(data)
        assert "sha256_written" not in down and down["result"] == "ok"
    assert only(lines, op="opendir", path="up")["entries"] == len(listing)  # with . and ..
    assert only(lines, op="rename")["path"] == "up/one.bin"
    assert only(lines, op="rename")["target"] == "up/renamed.bin"
    if relay.kind == "asyncssh-device":  # type: ignore[attr-defined]
        assert os.readlink(device_root / "up" / "link") == "renamed.bin"
        link = only(lines, op="symlink")
        assert (link["path"], link["target"], link["result"]) == ("up/link", "renamed.bin", "ok")
    assert only(lines, op="remove", path="up/empty.bin")["result"] == "ok"
    assert only(lines, op="remove", path="up/no-such-file")["result"].startswith(
        "no_such_file")
    assert only(lines, op="rmdir", path="up/sub")["result"] == "ok"
    assert not [line for line in lines if line["op"] == "protocol-error"]
    assert not [line for line in lines if line.get("result") == "incomplete"]


# -- through the relay: OpenSSH's sftp client ----------------------------------------------

@needs_openssh
async def test_openssh_sftp_batch_is_logged(relay: Relay, tmp_path: Path,
                                            device_root: Path) -> None:
    files = make_files(tmp_path / "local", SIZES, seed=11)
    local = tmp_path / "local"
    batch = [
        "mkdir up",
        *(f"put {local / name} up/{name}" for name in files),
        *(f"get up/{name} {tmp_path / 'back' / name}" for name in files),
        "ls -la up",
        "rename up/odd.bin up/moved.bin",
        "chmod 600 up/moved.bin",
        "-rm up/missing.bin",
        "rm up/one.bin",
    ]
    if relay.kind != "asyncssh-device":  # type: ignore[attr-defined]
        batch.append("ln -s moved.bin up/link")  # OpenSSH's argument order needs OpenSSH
    (tmp_path / "back").mkdir()
    (tmp_path / "batch").write_text("\n".join(batch) + "\n")
    proc = await asyncio.create_subprocess_exec(
        "sftp", *SSH_OPTIONS, "-P", str(relay.port), "-b", str(tmp_path / "batch"),
        "tech+device@127.0.0.1", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await within(30, proc.communicate())
    assert proc.returncode == 0, err.decode()
    session = await relay.next_session()
    # OpenSSH's client sends absolute paths (its working directory joined with the argument).
    home = "/" if relay.kind == "asyncssh-device" else f"{os.path.realpath(device_root)}/"
    lines = [{k: v.removeprefix(home) if k in ("path", "target") else v
              for k, v in line.items()} for line in read_log(session.log)]

    for name, data in files.items():
        assert (tmp_path / "back" / name).read_bytes() == data
        up = only(lines, op="upload", path=f"up/{name}")
        assert (up["bytes_written"], up["sha256_written"], up["result"]) == (
            len(data), sha(data), "ok")
        down = only(lines, op="download", path=f"up/{name}")
        assert (down["bytes_read"], down["sha256_read"], down["result"]) == (
            len(data), sha(data), "ok")
    listing = only(lines, op="opendir", path="up/")  # "ls up" lists "up/"
    assert listing["entries"] >= len(files) + 2 and listing["result"] == "ok"
    rename = [line for line in lines if line["op"] in ("rename", "posix-rename@openssh.com")]
    assert [(r["path"], r["target"], r["result"]) for r in rename] == [
        ("up/odd.bin", "up/moved.bin", "ok")]
    chmod = only(lines, op="setstat", path="up/moved.bin")
    assert chmod["permissions"] == "0600" and chmod["result"] == "ok"
    assert only(lines, op="remove", path="up/missing.bin")["result"].startswith("no_such_file")
    assert only(lines, op="remove", path="up/one.bin")["result"] == "ok"
    if relay.kind != "asyncssh-device":  # type: ignore[attr-defined]
        link = only(lines, op="symlink")
        assert (link["path"], link["target"]) == ("up/link", "moved.bin")  # target as typed
        assert os.readlink(device_root / "up" / "link") == "moved.bin"
    assert not [line for line in lines if line["op"] == "protocol-error"]


# -- replaying a captured real session in other chunkings ------------------------------------

@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Session:
    """One real asyncssh SFTP session's bytes, as the relay fed them to its recorder."""
    base = tmp_path_factory.mktemp("captured")

    async def capture() -> Session:
        root = base / "device"
        root.mkdir()
        (base / "logs").mkdir()
        files = make_files(base / "local", {"a": 0, "b": 40_000, "c": 200_000, "d": 3})
        device = await start_device(root, sftp_version=6)
        flusher = Flusher(interval=3600)
        relay = Relay(base / "logs", flusher,
                      await asyncssh_upstream(device.sockets[0].getsockname()[1]), False)
        await relay.start()
        async with (
            asyncssh.connect("127.0.0.1", relay.port, username="t", known_hosts=None,
                             client_keys=None, agent_path=None) as conn,
            conn.start_sftp_client() as sftp,
        ):
            await sftp.mkdir("d")
            for name in files:
                await sftp.put(str(base / "local" / name), f"d/{name}", block_size=8192)
                await sftp.get(f"d/{name}", str(base / f"back-{name}"), block_size=4096)
            await sftp.listdir("d")
            await sftp.rename("d/b", "d/bb")
            await sftp.stat("d/bb")
            await sftp.remove("d/a")
        session = await relay.next_session()
        relay.server.close()
        device.close()
        await flusher.stop()
        return session

    return asyncio.run(capture())


def replay(events: list[tuple[str, bytes]], path: Path) -> list[dict]:
    recorder = SFTPRecorder(path, flusher=Flusher(interval=3600), clock=lambda: 0.0)
    for direction, chunk in events:
        (recorder.from_client if direction == "c" else recorder.from_server)(chunk)
    recorder.close()
    lines = strip_times(read_log(path))
    path.unlink()
    return lines





def test_captured_session_is_logged_correctly(captured: Session, tmp_path: Path) -> None:
    lines = read_log(captured.log)
    sizes = {"a": 0, "b": 40_000, "c": 200_000, "d": 3}
    contents = {n: (captured.log.parent.parent / "local" / n).read_bytes() for n in sizes}
    for name, data in contents.items():
        assert only(lines, op="upload", path=f"d/{name}")["sha256_written"] == sha(data)
        assert only(lines, op="download", path=f"d/{name}")["sha256_read"] == sha(data)
    assert replay(captured.events, tmp_path / "again.jsonl") == strip_times(lines)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**64))
def test_any_chunking_gives_the_same_log(captured: Session, tmp_path: Path, seed: int) -> None:
    expected = replay(captured.events, tmp_path / "ref.jsonl")
    cut = list(rechunk(captured.events, random.Random(seed), STEPS))
    assert replay(cut, tmp_path / "cut.jsonl") == expected


def test_replies_fed_before_their_requests_still_pair_up(captured: Session,
                                                         tmp_path: Path) -> None:
    # A relay that feeds the device's answer before the request it answers (its two pumps
    # raced) must not change the record.
    expected = replay(captured.events, tmp_path / "ref.jsonl")
    events = list(captured.events)
    swapped = []
    i = 0
    while i < len(events):
        if i + 1 < len(events) and events[i][0] == "c" and events[i + 1][0] == "s" and i > 4:
            swapped += [events[i + 1], events[i]]
            i += 2
        else:
            swapped.append(events[i])
            i += 1
    assert swapped != events
    assert replay(swapped, tmp_path / "swapped.jsonl") == expected


# -- hand-made streams: ordering, limits, garbage ---------------------------------------------

def recorder_for(tmp_path: Path, name: str = "r.jsonl", **kwargs) -> SFTPRecorder:
    return SFTPRecorder(tmp_path / name, flusher=Flusher(interval=3600), **kwargs)


def open_for_read(rec: SFTPRecorder, path: str = "f.bin") -> None:
    rec.from_client(INIT)
    rec.from_server(VERSION)
    rec.from_client(packet(3, u32(1), s(path), u32(0x1), u32(0)))  # OPEN READ
    rec.from_server(packet(102, u32(1), s(b"h1")))


def close_handle(rec: SFTPRecorder, rid: int = 99) -> None:
    rec.from_client(packet(4, u32(rid), s(b"h1")))
    rec.from_server(status(rid))


def test_out_of_order_data_replies_hash_in_offset_order(tmp_path: Path) -> None:
    content = bytes(range(256)) * 40 + b"tail"
    rec = recorder_for(tmp_path)
    open_for_read(rec)
    blocks = [(10 + i, i * 1000, content[i * 1000:(i + 1) * 1000]) for i in range(11)]
    for rid, offset, _ in blocks:
        rec.from_client(packet(5, u32(rid), s(b"h1"), u64(offset), u32(1000)))
    rec.from_client(packet(5, u32(30), s(b"h1"), u64(11_000), u32(1000)))
    order = [5, 2, 9, 0, 1, 10, 3, 8, 4, 7, 6]
    for i in order:
        rid, _, data = blocks[i]
        rec.from_server(packet(103, u32(rid), s(data)))
    rec.from_server(status(30, 1, "End of file"))
    close_handle(rec)
    rec.close()
    line = only(read_log(tmp_path / "r.jsonl"), op="download")
    assert line["sha256_read"] == sha(content)
    assert line["bytes_read"] == len(content)
    assert line["mode"] == 1 and line["result"] == "ok" and "hash" not in line


def test_short_read_re_requested_fills_the_gap(tmp_path: Path) -> None:
    content = b"0123456789abcdef"
    rec = recorder_for(tmp_path)
    open_for_read(rec)
    rec.from_client(packet(5, u32(2), s(b"h1"), u64(0), u32(8)))
    rec.from_client(packet(5, u32(3), s(b"h1"), u64(8), u32(8)))
    rec.from_server(packet(103, u32(3), s(content[8:])))
    rec.from_server(packet(103, u32(2), s(content[:5])))  # short read
    rec.from_client(packet(5, u32(4), s(b"h1"), u64(5), u32(3)))
    rec.from_server(packet(103, u32(4), s(content[5:8])))
    close_handle(rec)
    rec.close()
    assert only(read_log(tmp_path / "r.jsonl"), op="download")["sha256_read"] == sha(content)


def test_overlapping_replies_hash_each_byte_once(tmp_path: Path) -> None:
    content = b"abcdefghijklmnopqrstuvwxyz0123"
    rec = recorder_for(tmp_path)
    open_for_read(rec)
    for rid, offset in ((2, 0), (3, 4), (4, 10), (5, 16)):
        rec.from_client(packet(5, u32(rid), s(b"h1"), u64(offset), u32(10)))
    rec.from_server(packet(103, u32(5), s(content[16:26])))
    rec.from_server(packet(103, u32(4), s(content[10:20])))  # overlaps 16..20 (held)
    rec.from_server(packet(103, u32(3), s(content[4:14])))  # overlaps 10..14 (held)
    rec.from_server(packet(103, u32(2), s(content[0:10])))  # now it all drains
    rec.from_client(packet(5, u32(6), s(b"h1"), u64(22), u32(8)))
    rec.from_server(packet(103, u32(6), s(content[22:30])))  # 22..26 again, then new bytes
    close_handle(rec)
    rec.close()
    line = only(read_log(tmp_path / "r.jsonl"), op="download")
    assert line["sha256_read"] == sha(content) and line["bytes_read"] == 48


def test_gap_that_never_fills_marks_hash_non_sequential(tmp_path: Path) -> None:
    rec = recorder_for(tmp_path)
    open_for_read(rec)
    rec.from_client(packet(5, u32(2), s(b"h1"), u64(0), u32(4)))
    rec.from_client(packet(5, u32(3), s(b"h1"), u64(4), u32(4)))
    rec.from_server(packet(103, u32(3), s(b"5678")))
    rec.from_server(status(2, 4, "Failure"))
    close_handle(rec)
    rec.close()
    line = only(read_log(tmp_path / "r.jsonl"), op="download")
    assert line["sha256_read"] is None and line["hash"] == "non-sequential"
    assert line["result"] == "failure: Failure"  # the failed READ, though CLOSE succeeded


def test_pending_limit_gives_up_on_the_hash(tmp_path: Path) -> None:
    rec = recorder_for(tmp_path)
    rec.max_pending_hash = 10_000
    open_for_read(rec)
    for i in range(4):
        rec.from_client(packet(5, u32(i + 1 if i else 9), s(b"h1"), u64(i * 4096), u32(4096)))
    for i in range(1, 4):
        rec.from_server(packet(103, u32(i + 1), s(bytes(4096))))
    rec.from_server(packet(103, u32(9), s(bytes(4096))))
    close_handle(rec)
    rec.close()
    line = only(read_log(tmp_path / "r.jsonl"), op="download")
    assert line["sha256_read"] is None and line["hash"] == "non-sequential"
    assert line["bytes_read"] == 4 * 4096


def test_out_of_order_writes_and_resumed_upload(tmp_path: Path) -> None:
    rec = recorder_for(tmp_path)
    rec.from_client(INIT)
    rec.from_server(VERSION)
    rec.from_client(packet(3, u32(1), s("up.bin"), u32(0x2 | 0x8), u32(0)))  # WRITE|CREAT
    rec.from_server(packet(102, u32(1), s(b"h1")))
    rec.from_client(packet(6, u32(3), s(b"h1"), u64(104), s(b"EFGH")))
    rec.from_client(packet(6, u32(2), s(b"h1"), u64(100), s(b"ABCD")))
    rec.from_server(status(3))
    rec.from_server(status(2))
    close_handle(rec)
    rec.close()
    line = only(read_log(tmp_path / "r.jsonl"), op="upload")
    # The first WRITE decides where the content starts: 104 here, so 100 is out of order.
    assert line["hash"] == "non-sequential"
    rec = recorder_for(tmp_path, "r2.jsonl")
    rec.from_client(INIT)
    rec.from_server(VERSION)
    rec.from_client(packet(3, u32(1), s("up.bin"), u32(0x2), u32(0)))
    rec.from_server(packet(102, u32(1), s(b"h1")))
    rec.from_client(packet(6, u32(2), s(b"h1"), u64(100), s(b"ABCD")))
    rec.from_client(packet(6, u32(3), s(b"h1"), u64(104), s(b"EFGH")))
    rec.from_server(status(2))
    rec.from_server(status(3, 3, "Permission denied"))
    close_handle(rec)
    rec.close()
    line = only(read_log(tmp_path / "r2.jsonl"), op="upload")
    assert line["sha256_written"] == sha(b"ABCDEFGH") and line["write_offset"] == 100
    assert line["result"] == "permission_denied: Permission denied"


def test_open_refused_unanswered_and_still_open_are_logged(tmp_path: Path) -> None:
    rec = recorder_for(tmp_path)
    rec.from_client(INIT)
    rec.from_server(VERSION)
    rec.from_client(packet(3, u32(1), s("secret"), u32(0x1), u32(0)))
    rec.from_server(status(1, 3, "Permission denied"))
    rec.from_client(packet(3, u32(2), s("half.bin"), u32(0x2 | 0x8 | 0x10), u32(0)))
    rec.from_server(packet(102, u32(2), s(b"h1")))
    rec.from_client(packet(6, u32(3), s(b"h1"), u64(0), s(b"partial")))
    rec.from_client(packet(13, u32(4), s("gone")))  # REMOVE, never answered
    rec.from_client(packet(200, u32(5), s("posix-rename@openssh.com"), s("x"), s("y")))
    rec.from_server(status(5))
    rec.close()
    lines = strip_times(read_log(tmp_path / "r.jsonl"))
    assert lines[1:] == [
        {"op": "open", "path": "secret", "mode": 1,
         "result": "permission_denied: Permission denied"},
        {"op": "posix-rename@openssh.com", "path": "x", "target": "y", "result": "ok"},
        {"op": "remove", "path": "gone", "result": "incomplete"},
        {"op": "upload", "path": "half.bin", "mode": 0x1A, "bytes_read": 0,
         "bytes_written": 7, "sha256_written": sha(b"partial"), "result": "incomplete"},
    ]


def test_non_utf8_paths_are_escaped(tmp_path: Path) -> None:
    rec = recorder_for(tmp_path)
    rec.from_client(INIT)
    rec.from_server(VERSION)
    rec.from_client(packet(14, u32(1), s(b"caf\xe9/\xc3\xa9t\xc3\xa9"), u32(0)))
    rec.from_server(status(1))
    rec.close()
    assert read_log(tmp_path / "r.jsonl")[-1]["path"] == "caf\\xe9/\u00e9t\u00e9"


@pytest.mark.parametrize("client,server,reason", [
    (b"GET / HTTP/1.1\r\n\r\n", b"", "exceeds"),  # length 0x47455420
    (INIT + packet(6, u32(1), s(b"h"), u64(0), s(bytes(300_000))), VERSION, "exceeds"),
    (INIT + packet(42, u32(1)), VERSION, "not an SFTP v3 request"),
    (INIT, VERSION + packet(7, u32(1)), "not an SFTP reply"),
    (INIT + packet(3, u32(1), u32(1000), b"short"), VERSION, "past the end"),
    (INIT + packet(3, u32(1)), VERSION, "malformed"),
    (packet(3, u32(1), s("x"), u32(1), u32(0)), b"", "expected INIT"),
    (INIT, packet(101, u32(1), u32(0)), "expected VERSION"),
    (INIT + u32(0), VERSION, "too short"),
])
def test_garbage_logs_one_protocol_error_and_never_raises(
        tmp_path: Path, client: bytes, server: bytes, reason: str) -> None:
    rec = recorder_for(tmp_path)
    rec.from_client(client)
    rec.from_server(server)
    rec.from_client(INIT + packet(13, u32(7), s("after")))  # ignored from now on
    rec.from_server(os.urandom(100))
    assert rec.failed
    rec.close()
    lines = read_log(tmp_path / "r.jsonl")
    errors = [line for line in lines if line["op"] == "protocol-error"]
    assert len(errors) == 1 and reason in errors[0]["reason"], lines
    assert not [line for line in lines if line.get("path") == "after"]


@settings(max_examples=150, deadline=None)
@given(client=st.binary(max_size=300), server=st.binary(max_size=300),
       cuts=st.lists(st.integers(1, 50), max_size=10))
def test_arbitrary_bytes_never_raise(tmp_path_factory: pytest.TempPathFactory, client: bytes,
                                     server: bytes, cuts: list[int]) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "r.jsonl"
    rec = SFTPRecorder(path, flusher=Flusher(interval=3600))
    for i, n in enumerate([*cuts, 1000]):
        rec.from_client(INIT + client[:n] if i == 0 else client[:n])
        rec.from_server(VERSION + server[:n] if i == 0 else server[:n])
        client, server = client[n:], server[n:]
    rec.close()
    lines = read_log(path)
    assert sum(line["op"] == "protocol-error" for line in lines) <= 1


def test_operations_property_matches_the_file(tmp_path: Path) -> None:
    rec = recorder_for(tmp_path)
    rec.from_client(INIT)
    rec.from_server(VERSION)
    rec.from_client(packet(17, u32(1), s("etc")))
    rec.from_server(packet(105, u32(1), u32(0)))
    rec.close()
    assert rec.operations == read_log(tmp_path / "r.jsonl")
    assert rec.operations[-1]["op"] == "stat" and rec.operations[-1]["result"] == "ok"
