"""PROXY protocol (v1 text and v2 binary) in front of the SSH listener.

Behind HAProxy (``mode tcp`` + ``send-proxy`` / ``send-proxy-v2``) every TCP connection to
the SSH port starts with a PROXY header naming the real client. ``listen_with_proxy_protocol``
replaces ``asyncssh.listen`` for that case: it accepts sockets itself, reads *exactly* the
header bytes (the SSH bytes that follow stay in the kernel buffer), then runs an ordinary
asyncssh server connection over the socket.

The real client address reaches asyncssh through the socket: the accepted socket is re-wrapped
in a ``socket.socket`` subclass whose ``getpeername()`` answers the proxied address, so the
asyncio transport's ``peername``, asyncssh's own peer address (its logs, ``Match Address``,
host-based auth) and ``conn.get_extra_info("peername")`` in ``SSHServer.connection_made`` all
see the technician's address, not the load balancer's. The balancer's address is kept as
``conn.get_extra_info("proxy_peer")``; the parsed header as ``"proxy_header"``; the client's
address as ``"client_peer"``. Prefer ``client_peer``: on uvloop the transport's ``peername``
comes from the file descriptor and so names the balancer, not the client.

A missing, malformed or late header (or a connection from outside ``trusted``) closes the
socket with one warning naming the peer; the accept loop carries on.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Sequence
from typing import Any

import asyncssh
import structlog

from broker.ssh.proxy_header import (
    V1_MAX_LENGTH,
    V1_PREFIX,
    V2_HEADER_LENGTH,
    V2_SIGNATURE,
    Address,
    ProxyHeader,
    ProxyProtocolError,
    parse_v1,
    parse_v2,
)

__all__ = ["ProxiedAcceptor", "ProxyHeader", "ProxyProtocolError", "listen_with_proxy_protocol",
           "parse_v1", "parse_v2", "read_proxy_header"]

log = structlog.get_logger("broker.ssh.proxy")

DEFAULT_HEADER_TIMEOUT = 5.0

_LISTEN_OPTIONS = ("backlog", "reuse_address", "reuse_port", "family", "flags")



# -- reading from a socket -----------------------------------------------------------------

async def read_proxy_header(sock: socket.socket,
                            timeout: float = DEFAULT_HEADER_TIMEOUT) -> ProxyHeader:
    """Read exactly one PROXY header (v1 or v2) from a connected non-blocking socket.

    Never consumes a byte past the header: the first 12 bytes are shorter than any header;
    v2 then says its own length; v1's end is found by peeking (``MSG_PEEK``) and only the
    bytes up to ``\\r\\n`` are consumed. Raises ``ProxyProtocolError`` for a bad header, an
    early EOF or no complete header within ``timeout`` seconds.
    """
    try:
        async with asyncio.timeout(timeout):
            return await _read_header(sock)
    except TimeoutError:
        raise ProxyProtocolError(f"no complete PROXY header within {timeout:g}s") from None
    except ConnectionError as exc:
        raise ProxyProtocolError(f"connection failed while reading the PROXY header: "
                                 f"{exc.strerror or exc}") from None


async def _read_header(sock: socket.socket) -> ProxyHeader:
    head = b""
    while len(head) < len(V2_SIGNATURE):  # 12 bytes: every header is longer
        head += await _recv(sock, len(V2_SIGNATURE) - len(head))
        if not (V2_SIGNATURE.startswith(head) or head.startswith(V1_PREFIX)
                or V1_PREFIX.startswith(head)):
            raise ProxyProtocolError(f"not a PROXY header: starts {head!r}")
    if head == V2_SIGNATURE:
        fixed = head + await _recv_exactly(sock, V2_HEADER_LENGTH - len(head))
        (length,) = struct.unpack_from("!H", fixed, 14)
        header, _ = parse_v2(fixed + await _recv_exactly(sock, length))
        return header
    line = head
    while b"\r\n" not in line:
        room = V1_MAX_LENGTH - len(line)
        if room <= 0:
            raise ProxyProtocolError(f"PROXY v1 header has no \\r\\n within "
                                     f"{V1_MAX_LENGTH} bytes")
        chunk = await _peek(sock, room)
        end = (line[-1:] + chunk).find(b"\r\n")
        take = len(chunk) if end < 0 else end + 2 - len(line[-1:])
        line += await _recv_exactly(sock, take)
    return parse_v1(line)


async def _recv(sock: socket.socket, size: int) -> bytes:
    data = await asyncio.get_running_loop().sock_recv(sock, size)
    if not data:
        raise ProxyProtocolError("connection closed before the PROXY header was complete")
    return data


async def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        data += await _recv(sock, size - len(data))
    return data


async def _peek(sock: socket.socket, size: int) -> bytes:
    """Up to ``size`` bytes already waiting in the socket, without consuming them."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = sock.recv(size, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock)
            continue
        if not data:
            raise ProxyProtocolError("connection closed before the PROXY header was complete")
        return data


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = sock.fileno()
    loop.add_reader(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)


# -- the listener --------------------------------------------------------------------------

class _ProxiedSocket(socket.socket):
    """An accepted socket that reports the proxied client as its peer."""

    proxied_peer: Address | None = None

    def getpeername(self) -> Any:
        if self.proxied_peer is not None:
            return self.proxied_peer
        return super().getpeername()


def _with_peer(sock: socket.socket, peer: Address) -> socket.socket:
    proxied = _ProxiedSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    proxied.proxied_peer = peer
    proxied.setblocking(False)
    return proxied


def _shown(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = f"[{address[0]}]" if ":" in str(address[0]) else str(address[0])
        return f"{host}:{address[1]}"
    return str(address)


def _trusted_networks(trusted: Sequence[str] | None) -> list[ipaddress.IPv4Network
                                                            | ipaddress.IPv6Network] | None:
    if trusted is None:
        return None
    if isinstance(trusted, str):
        trusted = [trusted]
    networks = []
    for cidr in trusted:
        try:
            networks.append(ipaddress.ip_network(cidr.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {cidr!r} is not an IP address or CIDR "
                             "network") from None
    return networks


class ProxiedAcceptor:
    """The running listener: like ``asyncssh.SSHAcceptor`` (``sockets``, ``close()``,
    ``wait_closed()``, ``get_port()``), except that ``close()`` also closes the connections
    it accepted."""

    def __init__(self, sockets: list[socket.socket], options: asyncssh.SSHServerConnectionOptions,
                 *, trusted: Sequence[str] | None, header_timeout: float,
                 acceptor: Any = None, error_handler: Any = None) -> None:
        self.sockets = sockets
        self._options = options
        self._trusted = _trusted_networks(trusted)
        self._header_timeout = header_timeout
        self._acceptor, self._error_handler = acceptor, error_handler
        self._loop = asyncio.get_running_loop()
        self._accepting: list[asyncio.Task[None]] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._closed = False

    def _start(self) -> None:
        self._accepting = [asyncio.ensure_future(self._accept_loop(sock))
                           for sock in self.sockets]

    async def __aenter__(self) -> ProxiedAcceptor:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()
        await self.wait_closed()

    def get_addresses(self) -> list[Any]:
        return [sock.getsockname() for sock in self.sockets if sock.fileno() >= 0]

    def get_port(self) -> int:
        ports = {address[1] for address in self.get_addresses()}
        return ports.pop() if len(ports) == 1 else 0

    def is_serving(self) -> bool:
        return not self._closed

    @property
    def connections(self) -> frozenset[asyncssh.SSHServerConnection]:
        """The SSH connections currently open through this listener."""
        return frozenset(self._connections)

    def stop_accepting(self) -> None:
        """Stop listening; connections already accepted go on (a drain)."""
        for task in self._accepting:
            task.cancel()
        for sock in self.sockets:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(sock.fileno())
            sock.close()

    def close(self) -> None:
        """Stop listening, drop connections still sending their header, close the rest."""
        if self._closed:
            return
        self._closed = True
        for task in self._accepting:
            task.cancel()
        for sock in self.sockets:
            with contextlib.suppress(OSError, ValueError):
                self._loop.remove_reader(sock.fileno())
            sock.close()
        for conn in list(self._connections):
            conn.close()
        for task in list(self._handlers):
            task.cancel()

    async def wait_closed(self) -> None:
        await asyncio.gather(*self._accepting, *self._handlers, return_exceptions=True)

    async def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, peer = await self._loop.sock_accept(listener)
            except asyncio.CancelledError:
                raise
            except OSError as exc:  # EMFILE, ECONNABORTED...: keep serving
                log.warning("accepting an SSH connection failed", error=str(exc))
                await asyncio.sleep(0.1)
                continue
            task = asyncio.ensure_future(self._handle(sock, peer))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    async def _handle(self, sock: socket.socket, peer: Any) -> None:
        conn: asyncssh.SSHServerConnection | None = None
        started = False
        try:
            sock.setblocking(False)
            if not self._is_trusted(peer):
                log.warning("SSH connection refused: not from a trusted proxy",
                            peer=_shown(peer))
                sock.close()
                return
            try:
                header = await read_proxy_header(sock, self._header_timeout)
            except ProxyProtocolError as exc:
                log.warning("SSH connection dropped: bad PROXY protocol header",
                            peer=_shown(peer), error=str(exc))
                sock.close()
                return
            if header.source is not None:
                sock = _with_peer(sock, header.source)
            conn = asyncssh.SSHServerConnection(self._loop, self._options, self._acceptor,
                                                self._error_handler)
            conn.set_extra_info(proxy_header=header, proxy_peer=peer,
                                client_peer=header.source or peer)
            self._connections.add(conn)
            await self._loop.create_connection(lambda: conn, sock=sock)
            started = True
            await conn.wait_closed()
        except asyncio.CancelledError:
            if started and conn is not None:
                conn.abort()
            else:
                sock.close()
            raise
        except Exception as exc:
            log.warning("SSH connection failed before it started", peer=_shown(peer),
                        error=str(exc) or type(exc).__name__)
            if started and conn is not None:
                conn.abort()
            else:
                sock.close()
        finally:
            if conn is not None:
                self._connections.discard(conn)

    def _is_trusted(self, peer: Any) -> bool:
        if self._trusted is None:
            return True
        try:
            address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        except (ValueError, TypeError, IndexError):
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self._trusted)


async def listen_with_proxy_protocol(
        host: str | None, port: int, *, trusted: Sequence[str] | None = None,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT, **asyncssh_server_kwargs: Any,
) -> ProxiedAcceptor:
    """Like ``asyncssh.listen(host, port, **kwargs)``, for connections that start with a
    PROXY protocol header (v1 or v2).

    ``trusted``: CIDRs allowed to connect (the proxies); others are closed at once. None
    (the default) accepts any peer. ``header_timeout``: seconds a connection gets to send
    its header. The other keyword arguments are those of ``asyncssh.listen``: ``backlog``,
    ``reuse_address``, ``reuse_port``, ``family``, ``flags``, ``acceptor``,
    ``error_handler``, ``config``, ``options`` and every ``SSHServerConnectionOptions``
    option (``server_factory``, ``server_host_keys``, ``process_factory``, ...).
    """
    listen = {key: asyncssh_server_kwargs.pop(key) for key in _LISTEN_OPTIONS
              if key in asyncssh_server_kwargs}
    acceptor = asyncssh_server_kwargs.pop("acceptor", None)
    error_handler = asyncssh_server_kwargs.pop("error_handler", None)
    config = asyncssh_server_kwargs.pop("config", ())
    base = asyncssh_server_kwargs.pop("options", None)
    _trusted_networks(trusted)  # a bad CIDR fails here, not at the first connection
    options = await asyncssh.SSHServerConnectionOptions.construct(
        base, config=config, host=host or "", port=port, **asyncssh_server_kwargs)
    options.proxy_command = None
    sockets = await _listening_sockets(host, port, **listen)
    server = ProxiedAcceptor(sockets, options, trusted=trusted, header_timeout=header_timeout,
                             acceptor=acceptor, error_handler=error_handler)
    server._start()
    return server


async def _listening_sockets(host: str | None, port: int, *, backlog: int = 100,
                             reuse_address: bool | None = None,
                             reuse_port: bool | None = None,
                             family: int = socket.AF_UNSPEC,
                             flags: int = socket.AI_PASSIVE) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host`` (all addresses if empty)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host or None, port, family=family,
                                   type=socket.SOCK_STREAM, flags=flags)
    if reuse_address is None:
        reuse_address = hasattr(socket, "SO_REUSEADDR") and socket.SO_REUSEADDR != 0
    sockets: list[socket.socket] = []
    try:
        for af, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(af, kind, proto)
            sockets.append(sock)
            if reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                              f"{address!r}: {exc.strerror}") from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets
