"""PROXY protocol headers (v1 text and v2 binary), parsed strictly; no I/O.

Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import re
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX_LENGTH = 107  # the spec's worst case, "\r\n" included
V2_HEADER_LENGTH = 16

_V1_PORT = re.compile(r"(?:0|[1-9][0-9]{0,4})\Z")

Address = tuple[str, int]


@dataclass(frozen=True)
class ProxyHeader:
    """What the proxy said about the connection.

    ``source``/``destination`` are ``(address, port)`` or ``None`` when the proxy did not know
    them (v1 ``UNKNOWN``, v2 ``UNSPEC``/``UNIX``) or for a ``LOCAL`` connection (``local`` is
    True: the proxy's own health check). In every ``None`` case, use the socket's own peer.
    """

    source: Address | None
    destination: Address | None
    local: bool


class ProxyProtocolError(Exception):
    """The bytes are not a valid PROXY protocol header (the message says why)."""


# -- parsing -------------------------------------------------------------------------------

def parse_v1(line: bytes) -> ProxyHeader:
    """Parse one v1 header line, ``b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\\r\\n"``."""
    if len(line) > V1_MAX_LENGTH:
        raise ProxyProtocolError(f"PROXY v1 header is {len(line)} bytes, more than the "
                                 f"{V1_MAX_LENGTH} allowed")
    if not line.startswith(V1_PREFIX):
        raise ProxyProtocolError(f"not a PROXY v1 header: starts {line[:12]!r}")
    if not line.endswith(b"\r\n"):
        raise ProxyProtocolError("PROXY v1 header does not end with \\r\\n"
                                 if len(line) == V1_MAX_LENGTH or b"\n" in line
                                 else "truncated PROXY v1 header: no \\r\\n")
    body = line[len(V1_PREFIX):-2]
    if b"\r" in body or b"\n" in body:
        raise ProxyProtocolError("PROXY v1 header has a stray \\r or \\n before its end")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 header is not ASCII") from None
    if text == "UNKNOWN" or text.startswith("UNKNOWN "):
        return ProxyHeader(None, None, local=False)
    fields = text.split(" ")
    if len(fields) != 5:
        raise ProxyProtocolError(f"PROXY v1 header needs 'PROTO SRC DST SPORT DPORT', "
                                 f"got {text!r}")
    proto, src, dst, sport, dport = fields
    version = {"TCP4": 4, "TCP6": 6}.get(proto)
    if version is None:
        raise ProxyProtocolError(f"PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, "
                                 f"not {proto!r}")
    return ProxyHeader((_v1_address(src, version), _v1_port(sport)),
                       (_v1_address(dst, version), _v1_port(dport)), local=False)


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is None or address.version != version:
        raise ProxyProtocolError(f"PROXY v1 header: {text!r} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str) -> int:
    if not _V1_PORT.match(text) or int(text) > 65535:
        raise ProxyProtocolError(f"PROXY v1 header: {text!r} is not a port (0-65535)")
    return int(text)


def parse_v2(data: bytes) -> tuple[ProxyHeader, int]:
    """Parse the v2 header at the start of ``data``: the header and how many bytes it took.

    Bytes after the header are not looked at. TLVs are checked for shape and skipped.
    """
    if len(data) < V2_HEADER_LENGTH:
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyProtocolError(f"not a PROXY v2 header: starts {data[:12]!r}")
        raise ProxyProtocolError(f"truncated PROXY v2 header: {len(data)} of the "
                                 f"{V2_HEADER_LENGTH} fixed bytes")
    if not data.startswith(V2_SIGNATURE):
        raise ProxyProtocolError(f"not a PROXY v2 header: starts {data[:12]!r}")
    version, command = data[12] >> 4, data[12] & 0x0F
    family, transport = data[13] >> 4, data[13] & 0x0F
    (length,) = struct.unpack_from("!H", data, 14)
    total = V2_HEADER_LENGTH + length
    if version != 2:
        raise ProxyProtocolError(f"PROXY v2 header has version {version}, not 2")
    if command not in (0, 1):
        raise ProxyProtocolError(f"PROXY v2 header has command {command}, "
                                 "not LOCAL (0) or PROXY (1)")
    if family > 3 or transport > 2:
        raise ProxyProtocolError(f"PROXY v2 header has an unknown address family/transport "
                                 f"byte 0x{data[13]:02x}")
    if len(data) < total:
        raise ProxyProtocolError(f"truncated PROXY v2 header: {len(data)} of {total} bytes")
    payload = data[V2_HEADER_LENGTH:total]
    if command == 0:  # LOCAL: the proxy talking for itself; addresses are to be ignored
        return ProxyHeader(None, None, local=True), total
    if transport == 2:
        raise ProxyProtocolError("PROXY v2 header announces a UDP connection, not TCP")
    if family in (0, 3) or transport == 0:  # UNSPEC or UNIX: no usable address
        return ProxyHeader(None, None, local=False), total
    size = 4 if family == 1 else 16
    block = 2 * size + 4
    if length < block:
        raise ProxyProtocolError(f"PROXY v2 header is too short for IPv{4 if size == 4 else 6}"
                                 f" addresses: {length} of {block} bytes")
    src = ipaddress.ip_address(payload[:size])
    dst = ipaddress.ip_address(payload[size:2 * size])
    sport, dport = struct.unpack_from("!HH", payload, 2 * size)
    _check_tlvs(payload[block:])
    return ProxyHeader((str(src), sport), (str(dst), dport), local=False), total


def _check_tlvs(tlvs: bytes) -> None:
    offset = 0
    while offset < len(tlvs):
        if len(tlvs) - offset < 3:
            raise ProxyProtocolError(f"PROXY v2 header: truncated TLV at byte {offset}")
        (size,) = struct.unpack_from("!H", tlvs, offset + 1)
        offset += 3 + size
        if offset > len(tlvs):
            raise ProxyProtocolError(f"PROXY v2 header: TLV type 0x{tlvs[offset - 3 - size]:02x}"
                                     f" runs {offset - len(tlvs)} bytes past the header")
