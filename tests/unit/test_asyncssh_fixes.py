"""broker.ssh.asyncssh_fixes, against real asyncssh connections on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from broker.aio import within
from broker.errors import ConfigError
from broker.ssh import asyncssh_fixes
from broker.ssh.asyncssh_fixes import window_credit

WINDOW = 1024 * 1024
PACKET = 32 * 1024


def test_window_credit_counts_buffered_data_as_unconsumed() -> None:
    assert window_credit(recv_window=100, buffered=0, initial=1000) == 900
    # 600 bytes still wait in the channel: only what the session took may be re-sent
    assert window_credit(recv_window=100, buffered=600, initial=1000) == 0
    assert window_credit(recv_window=100, buffered=300, initial=1000) == 600
    assert window_credit(recv_window=600, buffered=0, initial=1000) == 0


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False


@pytest.fixture
async def loopback(tmp_path: Path) -> AsyncIterator[tuple[asyncssh.SSHClientConnection,
                                                          asyncio.Queue[object]]]:
    """A client connection to an in-process server whose sessions go to the queue."""
    asyncssh_fixes.install()
    sessions: asyncio.Queue[object] = asyncio.Queue()

    async def on_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await sessions.put((process, done))
        await done

    host_key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[host_key], server_factory=_Server,
        process_factory=on_process, encoding=None, window=WINDOW, max_pktsize=PACKET,
        encryption_algs=["aes128-gcm@openssh.com"])
    port = server.sockets[0].getsockname()[1]
    client = await asyncssh.connect("127.0.0.1", port, known_hosts=None, username="x",
                                    config=None, agent_path=None, client_keys=None,
                                    encryption_algs=["aes128-gcm@openssh.com"])
    try:
        yield client, sessions
    finally:
        client.close()
        server.close()
        await server.wait_closed()


async def test_a_slow_reader_holds_no_more_than_its_window_allows(loopback) -> None:  # type: ignore[no-untyped-def]
    """The reader takes small bites, so the channel pauses and resumes with data still in
    its buffer, the pattern that let asyncssh credit the sender past the window."""
    client, sessions = loopback
    process = await client.create_process(encoding=None)
    server_process, done = await sessions.get()
    channel = server_process.channel
    payload = b"x" * (8 * WINDOW)
    peak = 0

    async def write_all() -> None:
        for start in range(0, len(payload), 4 * PACKET):
            process.stdin.write(payload[start:start + 4 * PACKET])
            await process.stdin.drain()
        process.stdin.write_eof()

    writer = asyncio.ensure_future(write_all())
    received = 0
    while received < len(payload):
        chunk = await server_process.stdin.read(8 * 1024)
        assert chunk, "end of file before the whole payload arrived"
        received += len(chunk)
        held = (sum(len(item) for item, _ in channel._recv_buf)
                + server_process._recv_buf_len)
        peak = max(peak, held)
        if received % (64 * 1024) == 0:
            await asyncio.sleep(0)
    await writer
    done.set_result(None)
    process.close()
    assert received == len(payload)
    # the session's own buffer (its limit is the window) plus at most one window in flight
    assert peak <= 2 * WINDOW + PACKET, f"{peak} bytes held for a {WINDOW}-byte window"


async def test_no_ignore_packet_goes_before_each_data_packet(loopback) -> None:  # type: ignore[no-untyped-def]
    client, sessions = loopback
    process = await client.create_process(encoding=None)
    server_process, done = await sessions.get()
    before = client._send_seq
    for _ in range(10):
        process.stdin.write(b"y" * 100)
        await process.stdin.drain()
    assert len(await server_process.stdin.readexactly(1000)) == 1000
    assert client._send_seq - before == 10  # ten data packets, no MSG_IGNORE among them
    done.set_result(None)
    process.close()


def test_cbc_ciphers_keep_the_ignore_countermeasure() -> None:
    class Conn:
        def __init__(self, client: bool, cs: bytes, sc: bytes) -> None:
            self._client, self._enc_alg_cs, self._enc_alg_sc = client, cs, sc

        def is_client(self) -> bool:
            return self._client

    assert asyncssh_fixes.uses_cbc(Conn(True, b"aes128-cbc", b"aes128-gcm@openssh.com"))
    assert not asyncssh_fixes.uses_cbc(Conn(False, b"aes128-cbc", b"aes128-gcm@openssh.com"))
    assert asyncssh_fixes.uses_cbc(Conn(False, b"x", b"rijndael-cbc@lysator.liu.se"))
    assert not asyncssh_fixes.uses_cbc(Conn(True, b"aes256-ctr", b"aes256-ctr"))


async def _logged_exchange(loopback, caplog, level: int, payload: bytes) -> list[str]:  # type: ignore[no-untyped-def]
    """Send ``payload`` from client to server at asyncssh debug ``level``; the log lines."""
    client, sessions = loopback
    asyncssh.set_debug_level(level)
    try:
        with caplog.at_level(logging.DEBUG, logger="asyncssh"):
            process = await client.create_process(encoding=None)
            server_process, done = await sessions.get()
            process.stdin.write(payload)
            await process.stdin.drain()
            assert await server_process.stdin.readexactly(len(payload)) == payload
    finally:
        asyncssh.set_debug_level(1)
    done.set_result(None)
    process.close()
    return [record.getMessage() for record in caplog.records]


async def test_packet_logging_still_works_at_debug_level_3(loopback, caplog) -> None:  # type: ignore[no-untyped-def]
    messages = await _logged_exchange(loopback, caplog, 3, b"z")
    assert any("MSG_CHANNEL_DATA" in message for message in messages)


class _Rechunker:
    """A TCP proxy that passes the byte stream on in fragments of random size (1 byte to
    70 KiB), so packet headers, bodies and tags straddle reads in every possible way. With
    ``flip_at`` it flips one bit of the client's stream at that offset."""

    def __init__(self, target_port: int, seed: int, flip_at: int | None = None) -> None:
        self.target_port, self.flip_at = target_port, flip_at
        self.random = random.Random(seed)
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._copy(reader, up_writer, self.flip_at),
                             self._copy(up_reader, writer, None), return_exceptions=True)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    flip_at: int | None) -> None:
        offset = 0
        try:
            while data := await reader.read(256 * 1024):
                if flip_at is not None and offset <= flip_at < offset + len(data):
                    i = flip_at - offset
                    data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
                offset += len(data)
                while data:
                    cut = self.random.choice((1, 3, 17, 4096, 32 * 1024 + 5, 70 * 1024))
                    writer.write(data[:cut])
                    data = data[cut:]
                    await writer.drain()
        finally:
            writer.close()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


class _Coalescer(_Rechunker):
    """A proxy that passes the client's version line and the first 20 bytes of its KEXINIT,
    then holds what the client sends next (the rest of KEXINIT and, once the server's KEXINIT
    has reached the client, its key exchange init) and passes it on in one write: the server
    reads the end of a packet it handles asynchronously together with the packet after it."""

    def __init__(self, target_port: int) -> None:
        super().__init__(target_port, seed=0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._hold_then_copy(reader, up_writer),
                             self._copy(up_reader, writer, None), return_exceptions=True)

    async def _hold_then_copy(self, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readuntil(b"\r\n") + await reader.readexactly(20))
        held = b""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.5):
                while more := await reader.read(65536):
                    held += more
        writer.write(held)
        await self._copy(reader, writer, None)


class _RecordingServer(_Server):
    def __init__(self, lost: list[Exception | None]) -> None:
        self.lost = lost

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def _echo_through_rechunker(cipher: str, seed: int, size: int, flip_at: int | None = None,
                                  lost: list[Exception | None] | None = None,
                                  rekey_bytes: int | None = None, to_stderr: bool = False,
                                  proxy_class: type[_Rechunker] | None = None
                                  ) -> tuple[bytes, bytes]:
    """Send ``size`` random bytes to a server that echoes them back (on stdout, or stderr)
    through a re-chunking proxy; return what was sent and what came back."""
    asyncssh_fixes.install()
    rekey = {} if rekey_bytes is None else {"rekey_bytes": rekey_bytes}

    async def echo(process: asyncssh.SSHServerProcess[bytes]) -> None:
        out = process.stderr if to_stderr else process.stdout
        while data := await process.stdin.read(64 * 1024):
            out.write(data)
            await out.drain()
        process.exit(0)

    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=lambda: _RecordingServer([] if lost is None else lost),
        process_factory=echo, encoding=None, encryption_algs=[cipher], window=WINDOW,
        max_pktsize=PACKET, **rekey)
    target = server.sockets[0].getsockname()[1]
    proxy = _Rechunker(target, seed, flip_at) if proxy_class is None else proxy_class(target)
    port = await proxy.start()
    payload = os.urandom(size)
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="x",
                                    config=None, agent_path=None, client_keys=None,
                                    encryption_algs=[cipher], **rekey) as client:
            process = await client.create_process(encoding=None)
            process.stdin.write(payload)
            process.stdin.write_eof()
            back = await (process.stderr if to_stderr else process.stdout).read()
            await process.wait()
            return payload, back
    finally:
        proxy.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(("cipher", "seed"), [
    ("aes128-gcm@openssh.com", 1), ("aes256-gcm@openssh.com", 2),
    ("chacha20-poly1305@openssh.com", 3), ("aes128-ctr", 4)])
async def test_streams_survive_any_split_of_the_input(cipher: str, seed: int) -> None:
    sent, back = await _echo_through_rechunker(cipher, seed, 3 * 1024 * 1024 + 11)
    assert back == sent


async def test_input_read_with_the_end_of_a_packet_handled_asynchronously_is_kept() -> None:
    # the server handles KEXINIT in a task and reads nothing more until it is done; the
    # key exchange init that came in the same read must wait for it, not be lost
    sent, back = await within(20, _echo_through_rechunker("aes128-gcm@openssh.com", 0, 64 * 1024,
                                proxy_class=_Coalescer))
    assert back == sent


async def test_a_flipped_bit_after_key_exchange_drops_the_connection() -> None:
    lost: list[Exception | None] = []
    sent, back = await _echo_through_rechunker("aes128-gcm@openssh.com", 5, 1024 * 1024,
                                               flip_at=200 * 1024, lost=lost)
    assert len(back) < len(sent)
    assert len(lost) == 1 and isinstance(lost[0], asyncssh.MACError)


@pytest.mark.parametrize("length", [0, 1, 3])
async def test_a_packet_length_shorter_than_its_header_ends_the_connection(length: int) -> None:
    """Before key exchange a peer may claim any length; one shorter than the header block
    must end the connection at once, not make the parser step backwards over the input."""
    asyncssh_fixes.install()
    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=_Server)
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(b"SSH-2.0-probe\r\n" + length.to_bytes(4, "big") + b"\x04" * 60)
        await writer.drain()
        received = await within(5, reader.read())  # read() returns at EOF
        assert received.startswith(b"SSH-2.0-")
        assert b"Invalid packet length" in received  # the disconnect says why, in the clear
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


# -- the channel-data fast path (broker.ssh.fastpath) ------------------------------------------

@pytest.mark.parametrize("cipher", ["aes128-gcm@openssh.com", "aes128-ctr"])
async def test_streams_survive_a_key_exchange_every_256_kib(cipher: str) -> None:
    """Data is sealed directly only while no key exchange is due or running; in between it
    goes through asyncssh's own path, and sequence numbers must still line up."""
    sent, back = await _echo_through_rechunker(cipher, 6, 4 * 1024 * 1024 + 7,
                                               rekey_bytes=256 * 1024)
    assert back == sent


async def test_a_sender_of_nothing_but_data_still_rekeys_on_time(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """Only the client has a byte limit and only it sends data: every key exchange here is
    one its data packets made due."""
    asyncssh_fixes.install()
    received: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def sink(process: asyncssh.SSHServerProcess[bytes]) -> None:
        total = 0
        while data := await process.stdin.read(64 * 1024):
            total += len(data)
        received.set_result(total)
        process.exit(0)

    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=_Server, process_factory=sink, encoding=None, window=WINDOW,
        max_pktsize=PACKET, encryption_algs=["aes128-gcm@openssh.com"])
    try:
        with caplog.at_level(logging.DEBUG, logger="asyncssh"):
            async with asyncssh.connect(
                    "127.0.0.1", server.sockets[0].getsockname()[1], known_hosts=None,
                    username="x", config=None, agent_path=None, client_keys=None,
                    encryption_algs=["aes128-gcm@openssh.com"],
                    rekey_bytes=256 * 1024) as client:
                process = await client.create_process(encoding=None)
                for _ in range(16):
                    process.stdin.write(os.urandom(256 * 1024))
                    await process.stdin.drain()
                process.stdin.write_eof()
                assert await received == 16 * 256 * 1024
    finally:
        server.close()
        await server.wait_closed()
    exchanges = sum("Requesting key exchange" in r.getMessage() for r in caplog.records)
    assert exchanges >= 2 * 12, exchanges  # each exchange is logged by both ends


async def test_extended_data_survives_any_split_of_the_input() -> None:
    sent, back = await _echo_through_rechunker("aes128-gcm@openssh.com", 7, 2 * 1024 * 1024 + 3,
                                               to_stderr=True)
    assert back == sent


async def test_data_written_from_a_bytearray_is_sent_as_it_was_when_written(loopback) -> None:  # type: ignore[no-untyped-def]
    client, sessions = loopback
    process = await client.create_process(encoding=None)
    server_process, done = await sessions.get()
    # more than the window, so most of it waits in the channel while the buffer changes
    data = bytearray(os.urandom(3 * WINDOW))
    expected = bytes(data)
    process.stdin.write(data)
    data[:] = b"\0" * len(data)
    assert await server_process.stdin.readexactly(len(expected)) == expected
    done.set_result(None)
    process.close()


async def test_text_channels_still_encode_and_decode(loopback) -> None:  # type: ignore[no-untyped-def]
    client, sessions = loopback
    process = await client.create_process(encoding="utf-8")
    server_process, done = await sessions.get()
    process.stdin.write("h\u00e9llo \u2603\n")
    assert await server_process.stdin.readexactly(len("h\u00e9llo \u2603\n".encode())) == \
        "h\u00e9llo \u2603\n".encode()
    server_process.stdout.write("d\u00e9j\u00e0 vu\n".encode())
    assert await process.stdout.readline() == "d\u00e9j\u00e0 vu\n"
    done.set_result(None)
    process.close()


async def test_data_logging_still_works_at_debug_level_2(loopback, caplog) -> None:  # type: ignore[no-untyped-def]
    messages = await _logged_exchange(loopback, caplog, 2, b"abc")
    assert any("Sending 3 data bytes" in message for message in messages)
    assert any("Received 3 data bytes" in message for message in messages)


async def test_a_write_of_several_packets_reaches_the_socket_in_one_send(loopback) -> None:  # type: ignore[no-untyped-def]
    """The sealed packets of one flush go to the transport together (one ``send``), not
    one per 32 KiB packet."""
    client, sessions = loopback
    process = await client.create_process(encoding=None)
    server_process, done = await sessions.get()
    writes: list[int] = []
    transport = client._transport
    real_write = transport.write
    transport.write = lambda data: (writes.append(len(data)), real_write(data))[1]
    try:
        process.stdin.write(os.urandom(8 * PACKET))
        await process.stdin.drain()
    finally:
        del transport.write
    assert len(await server_process.stdin.readexactly(8 * PACKET)) == 8 * PACKET
    assert writes and max(writes) > 7 * PACKET, writes
    done.set_result(None)
    process.close()


def test_install_refuses_an_unchecked_asyncssh_version() -> None:
    asyncssh_fixes.check_version(asyncssh.__version__)  # the installed one is checked
    assert asyncssh.__version__ in asyncssh_fixes.CHECKED_VERSIONS
    for other in ("2.23.1", "2.25.0", "3.0.0"):
        with pytest.raises(ConfigError) as caught:
            asyncssh_fixes.check_version(other)
        message = str(caught.value)
        assert f"asyncssh {other} is installed" in message and "\n" not in message
        assert "requirements.lock" in message


def test_pyproject_pins_the_checked_version_exactly() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    pins = re.findall(r'"asyncssh==([0-9.]+)"', text)
    assert pins == [asyncssh_fixes.CHECKED_VERSIONS[-1]]
    lock = (Path(__file__).resolve().parents[2] / "requirements.lock").read_text()
    assert f"asyncssh=={asyncssh_fixes.CHECKED_VERSIONS[-1]}" in lock


@pytest.mark.parametrize("configured", [False, True])
async def test_a_login_rebuilds_the_server_options_only_under_config_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, configured: bool) -> None:
    asyncssh_fixes.install()
    rebuilt: list[bool] = []
    prepare = asyncssh.SSHServerConnectionOptions.prepare

    def counted(self: asyncssh.SSHServerConnectionOptions, *args: object,
                **kwargs: object) -> None:
        rebuilt.append(True)
        prepare(self, *args, **kwargs)  # type: ignore[arg-type]

    config = tmp_path / "sshd_config"
    config.write_text("Match User blocked\n  PermitTTY no\n")
    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=_Server, config=[str(config)] if configured else ())
    monkeypatch.setattr(asyncssh.SSHServerConnectionOptions, "prepare", counted)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="x",
                                    config=None, agent_path=None, client_keys=None):
            pass
    finally:
        server.close()
        await server.wait_closed()
    # with configuration files, a login's Match blocks still apply (the options rebuilt)
    assert bool(rebuilt) is configured
