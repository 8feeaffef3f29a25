"""Listeners shared by a node's worker processes (Linux ``SO_REUSEPORT``).

Each worker binds its own listening socket to the same address with ``SO_REUSEPORT``; the
kernel hands each new connection to one of them. Two helpers for the supervisor and the
workers:

* :func:`claim_port`: before any worker starts, whether the address is free (a plain bind,
  *without* ``SO_REUSEPORT``, fails if anything listens there, a stray broker included, so
  that a second broker can never silently share the port), and which port ``0`` stands for.
* :func:`keep_clients_together`: by default the kernel spreads connections by their whole
  address (source port included), so one browser's connections land on different workers.
  The device origin keeps a browser's device session in the worker that signed it in
  (:mod:`broker.webproxy.handlers`), so there a classic BPF program chooses the worker by
  the client's address alone: HAProxy's ``balance source``, inside one node.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from typing import Any

import structlog

from broker.errors import ConfigError

log = structlog.get_logger("broker.reuseport")

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)  # Linux >= 4.5
SKF_NET_OFF = -0x100000  # classic BPF: loads relative to the IP header

# classic BPF opcodes (linux/filter.h)
_LD_B_ABS, _LD_W_ABS = 0x30, 0x20
_RSH_K, _MOD_K = 0x74, 0x94
_JEQ_K, _JA = 0x15, 0x05
_RET_A = 0x16


def split_listen(value: str) -> tuple[str, str]:
    """``HOST:PORT`` as written (an IPv6 host keeps its brackets) and the port."""
    host, _, port = value.rpartition(":")
    return host, port


def claim_port(section: str, listen: str) -> str:
    """Check that ``listen`` (``[section] listen``) is free and return it with port 0
    replaced by a free port, for every worker to bind. One line naming the key if not."""
    host, port = split_listen(listen)
    bare = host.strip("[]") or None
    try:
        infos = socket.getaddrinfo(bare, int(port), type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"[{section}] listen = {listen!r}: cannot listen: {exc}") from None
    chosen = int(port)
    probes: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            probes.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], chosen, *address[2:]))
            chosen = chosen or sock.getsockname()[1]
    except OSError as exc:
        raise ConfigError(f"[{section}] listen = {listen!r}: cannot listen: "
                          f"{exc.strerror or exc}") from None
    finally:
        for sock in probes:
            sock.close()
    return f"{host}:{chosen}"


def affinity_program(workers: int) -> bytes:
    """A classic BPF program returning ``client address % workers``: the index of the
    socket in the port's reuseport group (IPv4: the whole source address; IPv6: its last 32
    bits). An index past the group's end (a worker restarting) falls back to the kernel's
    hash."""
    program = [
        (_LD_B_ABS, 0, 0, SKF_NET_OFF),       # A = first byte of the IP header
        (_RSH_K, 0, 0, 4),                    # A = IP version
        (_JEQ_K, 0, 2, 4),                    # IPv4? next : IPv6 load
        (_LD_W_ABS, 0, 0, SKF_NET_OFF + 12),  # A = IPv4 source address
        (_JA, 0, 0, 1),
        (_LD_W_ABS, 0, 0, SKF_NET_OFF + 20),  # A = last word of the IPv6 source address
        (_MOD_K, 0, 0, workers),
        (_RET_A, 0, 0, 0),
    ]
    return b"".join(struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)
                    for code, jt, jf, k in program)


def keep_clients_together(sockets: Iterable[Any], workers: int) -> None:
    """Attach :func:`affinity_program` to the reuseport group of each listening socket (one
    attachment serves the whole group; every worker attaches the same program)."""
    import ctypes

    code = affinity_program(workers)
    buffer = ctypes.create_string_buffer(code, len(code))  # alive until the kernel copied it
    fprog = struct.pack("HP", len(code) // 8, ctypes.addressof(buffer))
    for sock in sockets:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)
        except OSError as exc:  # a kernel before 4.5: device sessions resume where they land
            log.warning("device origin: cannot keep each client on one worker",
                        error=exc.strerror or str(exc))
            return
