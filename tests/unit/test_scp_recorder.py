"""Legacy scp recorder: real ``scp -O`` sessions through a tee relay, plus hand-made streams.

The relay accepts ``scp -t``/``scp -f`` execs and pumps them unchanged to an upstream (OpenSSH's
own ``scp`` run by ``sh -c`` in the device directory, as sshd would, or an asyncssh device with
``allow_scp``), feeding copies to :class:`SCPRecorder`.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.aio import within
from broker.recording import Flusher
from broker.recording.scp import SCPRecorder, is_scp_command, parse_scp_command
from tests.unit.recorder_kit import (
    DEVICE_PASSWORD,
    SSH_OPTIONS,
    read_log,
    rechunk,
    sha,
    start_device,
)

needs_scp = pytest.mark.skipif(shutil.which("scp") is None, reason="OpenSSH scp not installed")





STEPS = (1, 2, 3, 7, 11, 100, 4096, 70_000)

def strip_times(lines: list[dict]) -> list[dict]:
    return [{k: v for k, v in line.items() if k != "t"} for line in lines]





def files_of(lines: list[dict]) -> dict[str, dict]:
    out = {}
    for line in lines:
        if line["op"] in ("upload", "download"):
            assert line["path"] not in out, line
            out[line["path"]] = line
    return out


# -- the tee relay --------------------------------------------------------------------------

@dataclass
class Session:
    log: Path
    events: list[tuple[str, bytes]]
    status: int | None


class Upstream:
    def __init__(self, write: Callable[[bytes], None], drain: Callable[[], Awaitable[None]],
                 eof: Callable[[], None], read: Callable[[], Awaitable[bytes]],
                 read_err: Callable[[], Awaitable[bytes]],
                 wait: Callable[[], Awaitable[int | None]]) -> None:
        self.write, self.drain, self.eof, self.read = write, drain, eof, read
        self.read_err, self.wait = read_err, wait


class Relay:
    def __init__(self, directory: Path, flusher: Flusher,
                 upstream: Callable[[str], Awaitable[Upstream]]) -> None:
        self.dir = directory
        self.flusher = flusher
        self.upstream = upstream
        self.sessions: asyncio.Queue[Session] = asyncio.Queue()
        self._n = 0

    async def start(self) -> None:
        class Open(asyncssh.SSHServer):
            def begin_auth(self, username: str) -> bool:
                return False

        self.server = await asyncssh.listen(
            "127.0.0.1", 0, server_factory=Open, process_factory=self._session,
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")], encoding=None,
            line_editor=False, agent_forwarding=False, allow_scp=False)
        self.port = self.server.sockets[0].getsockname()[1]

    async def next_session(self) -> Session:
        return await within(10, self.sessions.get())

    async def _session(self, process: asyncssh.SSHServerProcess) -> None:
        command = process.command or ""
        if not is_scp_command(command):
            process.stderr.write(b"only scp here\n")
            process.exit(1)
            return
        self._n += 1
        recorder = SCPRecorder(self.dir / f"scp-{self._n}.jsonl", command,
                               flusher=self.flusher)
        events: list[tuple[str, bytes]] = []
        up = await self.upstream(command)

        async def to_device() -> None:
            while data := await process.stdin.read(65536):
                events.append(("c", data))
                recorder.from_client(data)
                up.write(data)
                await up.drain()
            up.eof()

        async def to_client() -> None:
            while data := await up.read():
                events.append(("s", data))
                recorder.from_server(data)
                process.stdout.write(data)
                await process.stdout.drain()

        async def errors() -> None:
            while data := await up.read_err():
                process.stderr.write(data)

        pump = asyncio.create_task(to_device())
        await asyncio.gather(to_client(), errors())
        status = await up.wait()
        if not pump.done():
            pump.cancel()
        recorder.close(status)
        self.sessions.put_nowait(Session(recorder.path, events, status))
        process.exit(status or 0)





def asyncssh_upstream(port: int) -> Callable[[str], Awaitable[Upstream]]:
    async def connect(command: str) -> Upstream:
        conn = await asyncssh.connect("127.0.0.1", port, username="svc",
                                      password=DEVICE_PASSWORD, known_hosts=None,
                                      client_keys=None, agent_path=None)
        proc = await conn.create_process(command, encoding=None)

        async def wait() -> int | None:
            done = await proc.wait(check=False)
            conn.close()
            return done.exit_status

        return Upstream(proc.stdin.write, proc.stdin.drain, proc.stdin.write_eof,
                        lambda: proc.stdout.read(65536), lambda: proc.stderr.read(65536), wait)
    return connect


def openssh_upstream(root: Path) -> Callable[[str], Awaitable[Upstream]]:
    async def start(command: str) -> Upstream:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, cwd=root, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdin and proc.stdout and proc.stderr
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
        return Upstream(stdin.write, stdin.drain, stdin.close, lambda: stdout.read(65536),
                        lambda: stderr.read(65536), proc.wait)
    return start


@pytest.fixture
async def flusher():
    f = Flusher(interval=3600)
    yield f
    await f.stop()


@pytest.fixture(params=["openssh-scp", "asyncssh-device"])
async def relay(request, tmp_path: Path, flusher: Flusher):
    root = tmp_path / "device"
    (root / "up").mkdir(parents=True)
    device = None
    if request.param == "asyncssh-device":
        device = await start_device(root)
        upstream = asyncssh_upstream(device.sockets[0].getsockname()[1])
    else:
        if shutil.which("scp") is None:
            pytest.skip("OpenSSH scp is not installed")
        upstream = openssh_upstream(root)
    (tmp_path / "logs").mkdir()
    r = Relay(tmp_path / "logs", flusher, upstream)
    r.root = root  # type: ignore[attr-defined]
    r.kind = request.param  # type: ignore[attr-defined]
    await r.start()
    yield r
    r.server.close()
    if device is not None:
        device.close()


def make_tree(base: Path, seed: int = 3) -> dict[str, bytes]:
    """tree/{empty, small.txt, sub/big.bin, sub/deeper/odd.bin}: name -> content."""
    rng = random.Random(seed)
    sizes = {"empty": 0, "small.txt": 12, "sub/big.bin": 3 * 1024 * 1024 + 17,
             "sub/deeper/odd.bin": 65_537}
    out = {}
    for name, size in sizes.items():
        path = base / "tree" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(size)
        path.write_bytes(data)
        out[f"tree/{name}"] = data
    (base / "tree" / "small.txt").chmod(0o600)
    os.utime(base / "tree" / "small.txt", (1_600_000_000, 1_700_000_000))
    return out


async def scp(relay: Relay, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "scp", "-O", *SSH_OPTIONS, "-P", str(relay.port), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await within(30, proc.communicate())
    assert proc.returncode is not None
    return proc.returncode, err.decode()


REMOTE = "tech+device@127.0.0.1:"


# -- through the relay: OpenSSH's scp -O ----------------------------------------------------

@needs_scp
async def test_openssh_scp_uploads_and_downloads_are_logged(relay: Relay,
                                                            tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "local")
    root: Path = relay.root  # type: ignore[attr-defined]

    code, err = await scp(relay, "-r", "-p", str(tmp_path / "local" / "tree"), REMOTE + "up")
    assert code == 0, err
    upload = await relay.next_session()
    lines = read_log(upload.log)
    assert lines[0]["op"] == "command" and lines[0]["direction"] == "upload"
    assert lines[0]["recursive"] and lines[0]["preserve"] and lines[0]["remote"] == ["up"]
    logged = files_of(lines)
    assert set(logged) == set(tree)
    for name, data in tree.items():
        assert (root / "up" / name).read_bytes() == data  # passed through unchanged
        line = logged[name]
        assert (line["op"], line["size"], line["sha256"], line["result"]) == (
            "upload", len(data), sha(data), "ok")
    assert logged["tree/small.txt"]["mode"] == "0600"
    assert logged["tree/small.txt"]["mtime"] == 1_700_000_000
    assert logged["tree/small.txt"]["atime"] == 1_600_000_000
    mkdirs = [(line["path"], line["result"]) for line in lines if line["op"] == "mkdir"]
    assert sorted(mkdirs) == [("tree", "ok"), ("tree/sub", "ok"), ("tree/sub/deeper", "ok")]
    assert lines[-1] == {"t": lines[-1]["t"], "op": "exit", "status": 0}

    code, err = await scp(relay, REMOTE + "up/tree/sub/big.bin", str(tmp_path / "big.copy"))
    assert code == 0, err
    download = await relay.next_session()
    lines = read_log(download.log)
    assert lines[0]["direction"] == "download" and lines[0]["remote"] == ["up/tree/sub/big.bin"]
    data = tree["tree/sub/big.bin"]
    assert (tmp_path / "big.copy").read_bytes() == data
    line = files_of(lines)["big.bin"]
    assert (line["op"], line["size"], line["sha256"], line["result"]) == (
        "download", len(data), sha(data), "ok")

    code, err = await scp(relay, "-r", REMOTE + "up/tree", str(tmp_path / "copy"))
    assert code == 0, err
    lines = read_log((await relay.next_session()).log)
    logged = files_of(lines)
    assert {name: (line["sha256"], line["op"]) for name, line in logged.items()} == {
        name: (sha(data), "download") for name, data in tree.items()}
    for name, data in tree.items():
        assert (tmp_path / "copy" / name.removeprefix("tree/")).read_bytes() == data


@needs_scp
async def test_openssh_scp_errors_are_logged(relay: Relay, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"payload")

    code, _ = await scp(relay, REMOTE + "up/missing.txt", str(tmp_path / "x"))
    assert code != 0
    lines = read_log((await relay.next_session()).log)
    errors = [line for line in lines if line["op"] == "error"]
    assert len(errors) == 1 and "missing.txt" in errors[0]["message"], lines
    assert errors[0]["from"] == "server"
    assert not files_of(lines)
    assert lines[-1]["op"] == "exit"
    if relay.kind == "openssh-scp":  # type: ignore[attr-defined]
        assert lines[-1]["status"] == 1  # (asyncssh's scp server exits 0 after the error)

    code, _ = await scp(relay, str(tmp_path / "f.txt"), REMOTE + "no/such/dir/f.txt")
    assert code != 0
    lines = read_log((await relay.next_session()).log)
    logged = files_of(lines)
    # OpenSSH's scp refuses the file record; asyncssh's refuses it after reading the data.
    assert list(logged) == ["f.txt"] and logged["f.txt"]["size"] == 7
    assert logged["f.txt"]["result"].startswith(("error: ", "fatal: ")), logged
    assert "no/such/dir" in logged["f.txt"]["result"]


async def test_asyncssh_scp_client_is_logged(relay: Relay, tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "local", seed=5)
    async with asyncssh.connect("127.0.0.1", relay.port, username="tech+device",
                                known_hosts=None, client_keys=None, agent_path=None) as conn:
        await asyncssh.scp(str(tmp_path / "local" / "tree"), (conn, "up"), recurse=True,
                           preserve=True)
        await asyncssh.scp((conn, "up/tree/small.txt"), str(tmp_path / "small.copy"))
    lines = read_log((await relay.next_session()).log)
    assert lines[0]["command"].startswith("scp -") and lines[0]["direction"] == "upload"
    assert {name: (line["sha256"], line["size"]) for name, line in files_of(lines).items()} == {
        name: (sha(data), len(data)) for name, data in tree.items()}
    lines = read_log((await relay.next_session()).log)
    line = files_of(lines)["small.txt"]
    assert (line["op"], line["sha256"], line["mode"], line["result"]) == (
        "download", sha(tree["tree/small.txt"]), "0600", "ok")


# -- replaying a captured session in other chunkings -----------------------------------------

@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Session, dict[str, bytes]]:
    """A real recursive upload and its bytes, as the relay fed them to its recorder."""
    base = tmp_path_factory.mktemp("captured")

    async def capture() -> Session:
        root = base / "device"
        (root / "up").mkdir(parents=True)
        (base / "logs").mkdir()
        device = await start_device(root)
        flusher = Flusher(interval=3600)
        relay = Relay(base / "logs", flusher, asyncssh_upstream(device.sockets[0].getsockname()[1]))
        await relay.start()
        async with asyncssh.connect("127.0.0.1", relay.port, username="t", known_hosts=None,
                                    client_keys=None, agent_path=None) as conn:
            await asyncssh.scp(str(base / "local" / "tree"), (conn, "up"), recurse=True,
                               preserve=True, block_size=4096)
        session = await relay.next_session()
        relay.server.close()
        device.close()
        await flusher.stop()
        return session

    tree = make_tree(base / "local", seed=9)
    for name in list(tree):  # keep the capture small
        if name.endswith("big.bin"):
            (base / "local" / name).write_bytes(b"x" * 30_000)
            tree[name] = b"x" * 30_000
    return asyncio.run(capture()), tree


def replay(events: list[tuple[str, bytes]], command: str, path: Path) -> list[dict]:
    recorder = SCPRecorder(path, command, flusher=Flusher(interval=3600), clock=lambda: 0.0)
    for direction, chunk in events:
        (recorder.from_client if direction == "c" else recorder.from_server)(chunk)
    recorder.close(0)
    lines = strip_times(read_log(path))
    path.unlink()
    return lines





def test_captured_upload_is_logged(captured: tuple[Session, dict[str, bytes]]) -> None:
    session, tree = captured
    lines = read_log(session.log)
    assert {n: line["sha256"] for n, line in files_of(lines).items()} == {
        n: sha(d) for n, d in tree.items()}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**64))
def test_any_chunking_gives_the_same_log(captured: tuple[Session, dict[str, bytes]],
                                         tmp_path: Path, seed: int) -> None:
    session, _ = captured
    command = read_log(session.log)[0]["command"]
    expected = replay(session.events, command, tmp_path / "ref.jsonl")
    assert expected == strip_times(read_log(session.log))
    cut = list(rechunk(session.events, random.Random(seed), STEPS))
    assert replay(cut, command, tmp_path / "cut.jsonl") == expected


def test_answers_fed_late_still_pair_up(captured: tuple[Session, dict[str, bytes]],
                                        tmp_path: Path) -> None:
    # Every answer from the device fed only after the technician's next bytes (a relay whose
    # pumps race): the source's bytes wait for the answer they depend on.
    session, _ = captured
    command = read_log(session.log)[0]["command"]
    expected = replay(session.events, command, tmp_path / "ref.jsonl")
    events = list(session.events)
    for i in range(len(events) - 1):
        if events[i][0] == "s" and events[i + 1][0] == "c":
            events[i], events[i + 1] = events[i + 1], events[i]
    assert events != session.events
    assert replay(events, command, tmp_path / "late.jsonl") == expected


# -- hand-made streams ------------------------------------------------------------------------

def recorder(tmp_path: Path, command: str) -> SCPRecorder:
    return SCPRecorder(tmp_path / "r.jsonl", command, flusher=Flusher(interval=3600))


def test_download_stream_with_refusals_and_directories(tmp_path: Path) -> None:
    rec = recorder(tmp_path, "scp -r -f dir")
    rec.from_client(b"\0")  # the sink is ready
    rec.from_server(b"D0755 0 dir\n")
    rec.from_client(b"\0")
    rec.from_server(b"C0644 5 a b.txt\n")  # names may contain spaces
    rec.from_client(b"\0")
    rec.from_server(b"hello\0")
    rec.from_client(b"\0")
    rec.from_server(b"C0600 3 locked\n")
    rec.from_client(b"\x01scp: dir/locked: Permission denied\n")
    rec.from_server(b"D0700 0 sub\n")
    rec.from_client(b"\0")
    rec.from_server(b"\x01scp: dir/sub/x: Permission denied\n")  # source-side error
    rec.from_server(b"C0644 0 empty\n")
    rec.from_client(b"\0")
    rec.from_server(b"\0")
    rec.from_client(b"\0")
    rec.from_server(b"E\n")
    rec.from_client(b"\0")
    rec.from_server(b"C0644 10 last\nda")  # the channel dies mid-file
    rec.from_client(b"\0")
    rec.from_server(b"ta")
    rec.close(1)
    assert strip_times(read_log(tmp_path / "r.jsonl"))[1:] == [
        {"op": "mkdir", "path": "dir", "mode": "0755", "result": "ok"},
        {"op": "download", "path": "dir/a b.txt", "mode": "0644", "size": 5,
         "sha256": sha(b"hello"), "result": "ok"},
        {"op": "download", "path": "dir/locked", "mode": "0600", "size": 3, "sha256": None,
         "result": "error: scp: dir/locked: Permission denied"},
        {"op": "mkdir", "path": "dir/sub", "mode": "0700", "result": "ok"},
        {"op": "error", "from": "server", "message": "scp: dir/sub/x: Permission denied",
         "fatal": False},
        {"op": "download", "path": "dir/sub/empty", "mode": "0644", "size": 0,
         "sha256": sha(b""), "result": "ok"},
        {"op": "download", "path": "dir/last", "mode": "0644", "size": 10, "bytes": 4,
         "sha256": None, "result": "incomplete"},
        {"op": "exit", "status": 1},
    ]


def test_upload_fatal_answer_and_source_read_error(tmp_path: Path) -> None:
    rec = recorder(tmp_path, "scp -t -- -odd-target")
    rec.from_server(b"\0")
    rec.from_client(b"C0644 4 f\n")
    rec.from_server(b"\0")
    rec.from_client(b"abcd\x01scp: f: read error\n")  # data then the source's error
    rec.from_server(b"\0")
    rec.from_client(b"C0644 1 g\n")
    rec.from_server(b"\0")
    rec.from_client(b"z\0")
    rec.from_server(b"\x02scp: disk full\n")
    rec.close(1)
    lines = strip_times(read_log(tmp_path / "r.jsonl"))
    assert lines[0]["remote"] == ["-odd-target"] and lines[0]["direction"] == "upload"
    assert [(line["path"], line["sha256"], line["result"]) for line in lines[1:3]] == [
        ("f", sha(b"abcd"), "error: scp: f: read error"),
        ("g", sha(b"z"), "fatal: scp: disk full")]


def test_anything_but_an_answer_is_a_fatal_message(tmp_path: Path) -> None:
    # What OpenSSH's scp does too: a device whose shell prints instead of running scp.
    rec = recorder(tmp_path, "scp -t x")
    rec.from_server(b"bash: scp: command not found\n")
    rec.from_client(b"C0644 1 f\n")
    rec.close(127)
    assert strip_times(read_log(tmp_path / "r.jsonl"))[1:] == [
        {"op": "error", "from": "server", "message": "bash: scp: command not found",
         "fatal": True},
        {"op": "upload", "path": "f", "mode": "0644", "size": 1, "bytes": 0, "sha256": None,
         "result": "incomplete"},
        {"op": "exit", "status": 127}]


@pytest.mark.parametrize("command,source,sink,reason", [
    ("scp -t x", b"Q0644 1 f\n", b"\0", "unknown record"),
    ("scp -t x", b"C06x4 1 f\n", b"\0", "malformed record"),
    ("scp -t x", b"C0644 -5 f\n", b"\0", "malformed record"),
    ("scp -t x", b"T1 2\n", b"\0", "malformed record"),
    ("scp -t x", b"C0644 1 " + b"n" * 70_000, b"\0", "longer than"),
    ("scp -f x", bytes(9 * 1024 * 1024), b"", "without an answer"),
])
def test_garbage_logs_one_protocol_error(tmp_path: Path, command: str, source: bytes,
                                         sink: bytes, reason: str) -> None:
    rec = recorder(tmp_path, command)
    upload = parse_scp_command(command).upload  # type: ignore[union-attr]
    feed_source = rec.from_client if upload else rec.from_server
    feed_sink = rec.from_server if upload else rec.from_client
    feed_sink(sink)
    feed_source(source)
    feed_source(b"C0644 1 later\n")
    feed_sink(b"\0")
    assert rec.failed
    rec.close(None)
    lines = read_log(tmp_path / "r.jsonl")
    errors = [line for line in lines if line["op"] == "protocol-error"]
    assert len(errors) == 1 and reason in errors[0]["reason"], lines
    assert lines[-1]["op"] == "exit" and lines[-1]["status"] is None


@settings(max_examples=150, deadline=None)
@given(source=st.binary(max_size=200), sink=st.binary(max_size=50), upload=st.booleans())
def test_arbitrary_bytes_never_raise(tmp_path_factory: pytest.TempPathFactory, source: bytes,
                                     sink: bytes, upload: bool) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "r.jsonl"
    rec = SCPRecorder(path, "scp -t x" if upload else "scp -f x", flusher=Flusher(3600))
    feed_source = rec.from_client if upload else rec.from_server
    feed_sink = rec.from_server if upload else rec.from_client
    for i in range(0, max(len(source), len(sink)), 7):
        feed_sink(sink[i:i + 7])
        feed_source(source[i:i + 7])
    rec.close(0)
    assert sum(line["op"] == "protocol-error" for line in read_log(path)) <= 1


def test_not_an_scp_command_is_recorded_and_ignored(tmp_path: Path) -> None:
    rec = recorder(tmp_path, "cat /etc/passwd")
    rec.from_server(b"root:x:0:0\n")
    rec.close(0)
    assert strip_times(read_log(tmp_path / "r.jsonl")) == [
        {"op": "command", "command": "cat /etc/passwd", "result": "not an scp -t/-f command"},
        {"op": "exit", "status": 0}]


@pytest.mark.parametrize("command,expected", [
    ("scp -t /tmp/x", True),
    ("scp -f /etc/hosts", True),
    ("scp -v -r -p -d -t -- /tmp/dir", True),
    ("scp -rpt '/tmp/with space'", True),
    ("/usr/bin/scp -f a", False),
    ("scp -f a b c", False),
    ("scp -t -d up", True),
    ("scp -t", False),
    ("scp -t -f x", False),
    ("scp -x -t x", False),
    ("scp x y", False),
    ("scpx -t x", False),
    ("sh -c 'scp -t x'", False),
    ("", False),
    ("scp -t 'unbalanced", False),
    ("scp -t x; id", False),
])
def test_is_scp_command(command: str, expected: bool) -> None:
    assert is_scp_command(command) is expected


def test_parse_scp_command_flags() -> None:
    cmd = parse_scp_command("scp -rpt '/tmp/with space'")
    assert cmd is not None
    assert (cmd.upload, cmd.recursive, cmd.preserve, cmd.must_be_dir, cmd.path) == (
        True, True, True, False, "/tmp/with space")
