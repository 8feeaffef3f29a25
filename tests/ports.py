"""Loopback ports for servers a test starts and may restart on the same port.

A port the kernel hands out for ``bind(0)`` comes from the ephemeral range, where every
outgoing connection of every parallel test takes its source port too: a server restarted on
such a port after a ``kill -9`` can find it taken by some other test's client. These ports
come from below that range instead, and each pytest-xdist worker draws from a slice of its own.
"""

from __future__ import annotations

import os
import random
import socket

LOW, HIGH = 10000, 32000  # below Linux's default ephemeral range (32768-60999)
SLICES = 8
_given: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            return int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback TCP port nothing listens on, outside the ephemeral range, never handed
    out twice by this process."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) % SLICES if worker.isdigit() else 0
    high = min(HIGH, _ephemeral_low() - 1)
    width = (high - LOW) // SLICES
    start = LOW + index * width
    for _ in range(200):
        port = random.randrange(start, start + width)
        if port in _given:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {start}-{start + width}")
