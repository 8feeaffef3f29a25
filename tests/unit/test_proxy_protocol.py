"""PROXY protocol in front of the SSH listener: the parsers, exact reads from a socket, and
real asyncssh (and OpenSSH) clients relayed through a fake proxy that sends the header."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import shutil
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from broker.aio import within
from broker.ssh.proxy_protocol import (
    ProxiedAcceptor,
    ProxyHeader,
    ProxyProtocolError,
    listen_with_proxy_protocol,
    parse_v1,
    parse_v2,
    read_proxy_header,
)
from tests.proxy_relay import RELAY

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
SSH_BYTES = b"SSH-2.0-OpenSSH_9.6\r\n\x00\x00\x01\x0c\x0a\x14"


# -- header builders (written from the spec, independently of the parser) -------------------

def v1(src: tuple[str, int], dst: tuple[str, int] = ("192.0.2.1", 22)) -> bytes:
    proto = "TCP6" if ":" in src[0] else "TCP4"
    return f"PROXY {proto} {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def v2_raw(body: bytes, *, command: int = 1, family: int = 1, transport: int = 1,
           version: int = 2, length: int | None = None) -> bytes:
    return (SIG + bytes([version << 4 | command, family << 4 | transport])
            + struct.pack("!H", len(body) if length is None else length) + body)


def v2(src: tuple[str, int], dst: tuple[str, int] = ("192.0.2.1", 22), tlvs: bytes = b"",
       command: int = 1) -> bytes:
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    assert s.version == d.version
    body = s.packed + d.packed + struct.pack("!HH", src[1], dst[1]) + tlvs
    return v2_raw(body, command=command, family=1 if s.version == 4 else 2)


# -- v1 --------------------------------------------------------------------------------------

def test_v1_tcp4() -> None:
    assert parse_v1(b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n") == ProxyHeader(
        ("1.2.3.4", 1111), ("5.6.7.8", 2222), local=False)


def test_v1_tcp6_is_normalised() -> None:
    header = parse_v1(b"PROXY TCP6 2001:DB8:0:0::7 ::1 40000 2222\r\n")
    assert header == ProxyHeader(("2001:db8::7", 40000), ("::1", 2222), local=False)


@pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n",
                                  b"PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 65535 65535\r\n"])
def test_v1_unknown_means_use_the_socket_peer(line: bytes) -> None:
    assert parse_v1(line) == ProxyHeader(None, None, local=False)


def test_v1_longest_legal_line_is_accepted_and_one_more_byte_is_not() -> None:
    full = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = f"PROXY TCP6 {full} {full} 65535 65535\r\n".encode()
    assert len(line) == 104
    assert parse_v1(line).source == (full, 65535)
    padded = b"PROXY UNKNOWN " + b"x" * (107 - 16) + b"\r\n"
    assert len(padded) == 107
    assert parse_v1(padded).source is None
    with pytest.raises(ProxyProtocolError, match="108 bytes, more than the 107"):
        parse_v1(b"PROXY UNKNOWN " + b"x" * (108 - 16) + b"\r\n")


@pytest.mark.parametrize(("line", "message"), [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222", "truncated PROXY v1 header"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\n", "does not end with"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "not a PROXY v1 header"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1111 2222\r\n", "TCP4, TCP6 or UNKNOWN, not 'TCP5'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111\r\n", "needs 'PROTO SRC DST SPORT DPORT'"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1111 2222\r\n", "needs 'PROTO SRC DST SPORT DPORT'"),
    (b"PROXY TCP4 ::1 5.6.7.8 1111 2222\r\n", "'::1' is not an IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1111 2222\r\n", "'1.2.3.4' is not an IPv6 address"),
    (b"PROXY TCP4 1.2.3.400 5.6.7.8 1111 2222\r\n", "'1.2.3.400' is not an IPv4"),
    (b"PROXY TCP4 host.example 5.6.7.8 1111 2222\r\n", "is not an IPv4 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2222\r\n", "'65536' is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 0123 2222\r\n", "'0123' is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2222\r\n", "'-1' is not a port"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\r\n", "stray"),
    (b"PROXY TCP4 1.2.3.4\r\n5.6.7.8 1111 2222\r\n", "stray"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 \xd9\xa2\r\n", "not ASCII"),
])
def test_v1_bad_lines_are_refused_with_a_reason(line: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=re.escape(message)):
        parse_v1(line)


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(0, 65535),
       st.integers(0, 65535))
def test_v1_round_trip(address: Any, sport: int, dport: int) -> None:
    dst = "192.0.2.9" if address.version == 4 else "2001:db8::9"
    header = parse_v1(v1((str(address), sport), (dst, dport)))
    assert header == ProxyHeader((str(address), sport), (dst, dport), local=False)


# -- v2 --------------------------------------------------------------------------------------

def test_v2_tcp4() -> None:
    data = v2(("203.0.113.7", 40000), ("10.0.0.5", 2222))
    assert parse_v2(data + b"SSH-2.0-x") == (
        ProxyHeader(("203.0.113.7", 40000), ("10.0.0.5", 2222), local=False), 28)


def test_v2_tcp6() -> None:
    data = v2(("2001:db8::7", 40000), ("2001:db8::1", 22))
    assert parse_v2(data) == (
        ProxyHeader(("2001:db8::7", 40000), ("2001:db8::1", 22), local=False), 16 + 36)


def test_v2_tlvs_are_skipped_and_counted() -> None:
    ssl = tlv(0x20, b"\x01" + b"\x00" * 4 + tlv(0x21, b"TLSv1.3"))  # nested sub-TLV
    tlvs = tlv(0x01, b"h2") + tlv(0x04, b"") + ssl
    data = v2(("198.51.100.20", 5555), tlvs=tlvs)
    header, used = parse_v2(data + b"SSH-2.0-after")
    assert header.source == ("198.51.100.20", 5555)
    assert used == len(data) == 16 + 12 + len(tlvs)


def test_v2_local_is_a_health_check() -> None:
    assert parse_v2(v2_raw(b"", command=0, family=0, transport=0)) == (
        ProxyHeader(None, None, local=True), 16)
    # LOCAL with an address block (allowed): still local, addresses ignored, all consumed
    data = v2(("203.0.113.7", 1), command=0)
    assert parse_v2(data) == (ProxyHeader(None, None, local=True), len(data))


@pytest.mark.parametrize(("family", "transport", "body"), [
    (0, 0, b""), (0, 1, b""), (3, 1, b"\x00" * 216), (1, 0, b"\x00" * 12)])
def test_v2_without_usable_addresses_means_use_the_socket_peer(
        family: int, transport: int, body: bytes) -> None:
    assert parse_v2(v2_raw(body, family=family, transport=transport)) == (
        ProxyHeader(None, None, local=False), 16 + len(body))


@pytest.mark.parametrize(("data", "message"), [
    (SIG[:7], "truncated PROXY v2 header: 7 of the 16 fixed bytes"),
    (SIG + b"\x21\x11\x00", "truncated PROXY v2 header: 15 of the 16"),
    (v2(("1.2.3.4", 1))[:-1], "truncated PROXY v2 header: 27 of 28 bytes"),
    (v2_raw(b"\x00" * 12, length=13), "truncated PROXY v2 header: 28 of 29 bytes"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "not a PROXY v2 header"),
    (b"GET / HTTP/1.1\r\n", "not a PROXY v2 header"),
    (b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x00", "not a PROXY v2 header"),
    (v2_raw(b"\x00" * 12, version=1), "version 1, not 2"),
    (v2_raw(b"\x00" * 12, command=2), "command 2, not LOCAL"),
    (v2_raw(b"\x00" * 12, family=4), "unknown address family/transport byte 0x41"),
    (v2_raw(b"\x00" * 12, transport=3), "unknown address family/transport byte 0x13"),
    (v2_raw(b"\x00" * 12, transport=2), "a UDP connection, not TCP"),
    (v2_raw(b"\x00" * 11), "too short for IPv4 addresses: 11 of 12"),
    (v2_raw(b"\x00" * 35, family=2), "too short for IPv6 addresses: 35 of 36"),
    (v2(("1.2.3.4", 1), tlvs=b"\x01\x00"), "truncated TLV at byte 0"),
    (v2(("1.2.3.4", 1), tlvs=tlv(0x05, b"abc")[:-1]), "TLV type 0x05 runs 1 bytes past"),
])
def test_v2_bad_headers_are_refused_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(ProxyProtocolError, match=re.escape(message)):
        parse_v2(data)


_tlv = st.builds(tlv, st.integers(0, 255), st.binary(max_size=40))


@given(st.one_of(st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
                 st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6))),
       st.integers(0, 65535), st.integers(0, 65535), st.lists(_tlv, max_size=5),
       st.binary(max_size=30))
def test_v2_round_trip(addresses: Any, sport: int, dport: int, tlvs: list[bytes],
                       after: bytes) -> None:
    src, dst = (str(a) for a in addresses)
    data = v2((src, sport), (dst, dport), tlvs=b"".join(tlvs))
    header, used = parse_v2(data + after)
    assert header == ProxyHeader((src, sport), (dst, dport), local=False)
    assert used == len(data)


@given(st.binary(max_size=80))
def test_parsers_only_ever_raise_proxy_protocol_error(data: bytes) -> None:
    for parse in (parse_v1, parse_v2):
        with contextlib.suppress(ProxyProtocolError):
            parse(data)


# -- reading exactly the header from a socket ------------------------------------------------

@pytest.fixture
def pair() -> Any:
    server, client = socket.socketpair()
    server.setblocking(False)
    yield server, client
    server.close()
    client.close()


def _rest(sock: socket.socket) -> bytes:
    sock.setblocking(True)
    sock.settimeout(2)
    data = b""
    while len(data) < len(SSH_BYTES):
        data += sock.recv(100)
    return data


@pytest.mark.parametrize("header", [
    v1(("203.0.113.7", 40000)), b"PROXY UNKNOWN\r\n", v2(("203.0.113.7", 40000)),
    v2(("2001:db8::7", 1), ("2001:db8::1", 2), tlvs=tlv(0xEE, b"x" * 300)),
    v2_raw(b"", command=0, family=0, transport=0)])
async def test_reads_exactly_the_header_and_leaves_the_ssh_bytes(pair: Any,
                                                                 header: bytes) -> None:
    server, client = pair
    client.sendall(header + SSH_BYTES)
    got = await read_proxy_header(server)
    assert got == (parse_v2(header)[0] if header.startswith(SIG) else parse_v1(header))
    assert _rest(server) == SSH_BYTES


@pytest.mark.parametrize("header", [v1(("203.0.113.7", 40000)), b"PROXY UNKNOWN\r\n",
                                    v2(("203.0.113.7", 40000), tlvs=tlv(1, b"ab"))])
async def test_header_in_two_pieces_at_every_split_point(pair: Any, header: bytes) -> None:
    server, client = pair
    for cut in range(1, len(header)):
        client.sendall(header[:cut])
        reading = asyncio.ensure_future(read_proxy_header(server))
        await asyncio.sleep(0.001)
        assert not reading.done(), cut
        client.sendall(header[cut:] + SSH_BYTES)
        assert (await reading).source == (parse_v2(header)[0] if header.startswith(SIG)
                                          else parse_v1(header)).source
        assert _rest(server) == SSH_BYTES, cut
        server.setblocking(False)


async def test_header_byte_by_byte(pair: Any) -> None:
    server, client = pair
    header = v1(("203.0.113.7", 40000))
    reading = asyncio.ensure_future(read_proxy_header(server, timeout=5))
    for byte in header:
        client.send(bytes([byte]))
        await asyncio.sleep(0.002)
    client.sendall(SSH_BYTES)
    assert (await reading).source == ("203.0.113.7", 40000)
    assert _rest(server) == SSH_BYTES


async def test_no_header_within_the_timeout(pair: Any) -> None:
    server, client = pair
    client.sendall(b"PROXY TCP4 1.2")
    started = time.monotonic()
    with pytest.raises(ProxyProtocolError, match=r"no complete PROXY header within 0.2s"):
        await read_proxy_header(server, timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2


async def test_garbage_is_refused_without_waiting_for_the_timeout(pair: Any) -> None:
    server, client = pair
    client.sendall(b"SSH-2")
    with pytest.raises(ProxyProtocolError, match="not a PROXY header: starts b'SSH-2'"):
        await read_proxy_header(server, timeout=30)


async def test_v1_without_crlf_in_107_bytes(pair: Any) -> None:
    server, client = pair
    client.sendall(b"PROXY UNKNOWN " + b"x" * 200)
    with pytest.raises(ProxyProtocolError, match="no \\\\r\\\\n within 107 bytes"):
        await read_proxy_header(server, timeout=5)


async def test_eof_in_the_middle_of_the_header(pair: Any) -> None:
    server, client = pair
    client.sendall(v2(("1.2.3.4", 5))[:20])
    client.shutdown(socket.SHUT_WR)
    with pytest.raises(ProxyProtocolError, match="closed before the PROXY header"):
        await read_proxy_header(server, timeout=5)


# -- end to end: a real asyncssh server behind the listener ----------------------------------

CLIENT_KEY = asyncssh.generate_private_key("ssh-ed25519")


class Recorder(asyncssh.SSHServer):
    """Records what the connection's peer looks like from ``connection_made``, exactly as
    ``BrokerConnection.connection_made`` reads it."""

    def __init__(self, seen: list[dict[str, Any]]) -> None:
        self.seen = seen

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.seen.append({"peername": conn.get_extra_info("peername"),
                          "proxy_peer": conn.get_extra_info("proxy_peer"),
                          "proxy_header": conn.get_extra_info("proxy_header")})

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return password == "secret"

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data == CLIENT_KEY.public_data


def tell_peer(process: asyncssh.SSHServerProcess[str]) -> None:
    peer = process.get_extra_info("peername")
    process.stdout.write(f"{peer[0]}:{peer[1]}\n")
    process.exit(0)


Start = Callable[..., Awaitable[tuple[ProxiedAcceptor, int]]]


@pytest.fixture
def seen() -> list[dict[str, Any]]:
    return []


@pytest.fixture
async def start(seen: list[dict[str, Any]]) -> AsyncIterator[Start]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    running: list[ProxiedAcceptor] = []

    async def start(**kwargs: Any) -> tuple[ProxiedAcceptor, int]:
        acceptor = await listen_with_proxy_protocol(
            "127.0.0.1", 0, server_factory=lambda: Recorder(seen), server_host_keys=[host_key],
            process_factory=tell_peer, reuse_address=True, login_timeout=30, **kwargs)
        running.append(acceptor)
        return acceptor, acceptor.sockets[0].getsockname()[1]

    yield start
    for acceptor in running:
        acceptor.close()
        await within(5, acceptor.wait_closed())


def proxy_socket(port: int, header: bytes, *, slow: bool = False) -> socket.socket:
    """What HAProxy does: connect, send the header; the client's SSH bytes follow."""
    sock = socket.create_connection(("127.0.0.1", port))
    if slow:
        for byte in header:
            sock.send(bytes([byte]))
            time.sleep(0.003)
    else:
        sock.sendall(header)
    return sock


def client_options() -> dict[str, Any]:
    return {"username": "tech", "password": "secret", "known_hosts": None, "client_keys": None,
            "agent_path": None, "config": None}


async def ssh_through(port: int, header: bytes, *, slow: bool = False) -> str:
    sock = proxy_socket(port, header, slow=slow)
    async with asyncssh.connect(sock=sock, **client_options()) as conn:
        result = await within(10, conn.run("peer", check=True))
    assert isinstance(result.stdout, str)
    return result.stdout.strip()


async def refused(port: int, header: bytes = b"", *, timeout: float = 5) -> None:
    """Without a valid header the server says nothing and closes the connection."""
    sock = proxy_socket(port, header)
    sock.settimeout(timeout)
    try:
        assert await asyncio.to_thread(sock.recv, 100) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()


async def test_v1_client_address_is_what_the_server_sees(start: Start,
                                                         seen: list[dict[str, Any]]) -> None:
    _, port = await start()
    assert await ssh_through(port, v1(("203.0.113.7", 40000))) == "203.0.113.7:40000"
    assert seen[0]["peername"] == ("203.0.113.7", 40000)
    assert seen[0]["proxy_peer"][0] == "127.0.0.1"
    assert seen[0]["proxy_header"].destination == ("192.0.2.1", 22)


async def test_v2_ipv6_client_address_is_what_the_server_sees(
        start: Start, seen: list[dict[str, Any]]) -> None:
    _, port = await start()
    header = v2(("2001:db8::7", 40000), ("2001:db8::1", 22), tlvs=tlv(0x03, b"\x00" * 4))
    assert await ssh_through(port, header) == "2001:db8::7:40000"
    assert seen[0]["peername"] == ("2001:db8::7", 40000)


@pytest.mark.parametrize("header", [b"PROXY UNKNOWN\r\n",
                                    v2_raw(b"", command=0, family=0, transport=0)])
async def test_unknown_and_local_keep_the_socket_peer(start: Start, seen: list[dict[str, Any]],
                                                      header: bytes) -> None:
    _, port = await start()
    assert (await ssh_through(port, header)).startswith("127.0.0.1:")
    assert seen[0]["peername"][0] == "127.0.0.1"


async def test_a_slow_header_still_works(start: Start) -> None:
    _, port = await start()
    assert await ssh_through(port, v1(("203.0.113.7", 40000)), slow=True) == "203.0.113.7:40000"
    assert await ssh_through(port, v2(("203.0.113.8", 1)), slow=True) == "203.0.113.8:1"


async def test_no_header_is_dropped_and_the_listener_keeps_serving(
        start: Start, seen: list[dict[str, Any]]) -> None:
    _, port = await start()
    with capture_logs() as logs:
        with pytest.raises((asyncssh.Error, OSError)):
            async with asyncssh.connect("127.0.0.1", port, **client_options()):
                pass
        await asyncio.sleep(0.05)
    assert not seen  # the SSH server never saw that connection
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"] == "SSH connection dropped: bad PROXY protocol header"
    assert warning["peer"].startswith("127.0.0.1:")
    assert "not a PROXY header: starts b'SSH-2.0-" in warning["error"]
    garbage = (b"GET / HTTP/1.1\r\n\r\n", b"PROXY TCP9 x\r\n", SIG + b"\x99\x11\x00\x00")
    await asyncio.gather(*(refused(port, data) for data in garbage))
    assert await ssh_through(port, v1(("203.0.113.7", 40000))) == "203.0.113.7:40000"


async def test_no_header_within_the_timeout_is_dropped(start: Start) -> None:
    _, port = await start(header_timeout=0.3)
    with capture_logs() as logs:
        began = time.monotonic()
        await asyncio.gather(refused(port), refused(port, b"PROXY TCP4 1.2.3.4 "))
        assert 0.25 < time.monotonic() - began < 4
    assert [e["error"] for e in logs] == ["no complete PROXY header within 0.3s"] * 2
    assert await ssh_through(port, v1(("203.0.113.7", 40000))) == "203.0.113.7:40000"


async def test_only_trusted_proxies_may_connect(start: Start) -> None:
    _, elsewhere = await start(trusted=["10.0.0.0/8", "2001:db8::/32"])
    with capture_logs() as logs:
        await refused(elsewhere, v1(("203.0.113.7", 40000)), timeout=2)
        await asyncio.sleep(0.05)
    assert [e["event"] for e in logs] == ["SSH connection refused: not from a trusted proxy"]
    _, local = await start(trusted=["127.0.0.0/8"])
    assert await ssh_through(local, v1(("203.0.113.7", 40000))) == "203.0.113.7:40000"


async def test_a_bad_trusted_network_fails_at_listen_time(start: Start) -> None:
    with pytest.raises(ValueError, match=re.escape("'10.0.0.0/33' is not an IP address or CIDR")):
        await start(trusted=["10.0.0.0/33"])


async def test_close_stops_listening_and_closes_live_connections(start: Start) -> None:
    acceptor, port = await start()
    sock = proxy_socket(port, v1(("203.0.113.7", 40000)))
    client = await asyncssh.connect(sock=sock, **client_options())
    pending = socket.create_connection(("127.0.0.1", port))  # still owes its header
    await asyncio.sleep(0.05)
    assert len(acceptor.connections) == 1
    acceptor.close()
    await within(5, acceptor.wait_closed())
    await within(5, client.wait_closed())
    pending.settimeout(2)
    assert await asyncio.to_thread(pending.recv, 10) == b""
    pending.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert not acceptor.connections


async def test_listen_errors_surface_like_asyncssh_listen(start: Start) -> None:
    _, port = await start()
    with pytest.raises(OSError, match=r"(?i)address already in use"):
        await listen_with_proxy_protocol("127.0.0.1", port, server_host_keys=[CLIENT_KEY])


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
async def test_openssh_client_through_a_proxy_command(start: Start, tmp_path: Path) -> None:
    _, port = await start()
    key = tmp_path / "id_ed25519"
    CLIENT_KEY.write_private_key(str(key))
    key.chmod(0o600)
    helper = tmp_path / "proxy.py"
    helper.write_text(RELAY)
    header = v2(("198.51.100.77", 50123), tlvs=tlv(0x04, b"")).hex()
    proc = await asyncio.create_subprocess_exec(
        "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "IdentitiesOnly=yes", "-o",
        "IdentityAgent=none", "-o", "LogLevel=ERROR", "-i", str(key), "-o",
        f"ProxyCommand={sys.executable} {helper} 127.0.0.1 {port} {header}",
        "tech@broker.invalid", "peer",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await within(30, proc.communicate())
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "198.51.100.77:50123"


