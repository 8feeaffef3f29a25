"""Shared listeners (broker/reuseport.py) on real loopback sockets: a port already in use is
refused with one line, port 0 becomes one port for every worker, and on the device origin
the BPF program sends every connection of one client address to the same worker while
different addresses spread."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from broker.errors import ConfigError
from broker.reuseport import claim_port, keep_clients_together

WORKERS = 2


@pytest.fixture
def group() -> Iterator[list[socket.socket]]:
    """Two listening sockets sharing one loopback port, as two workers bind them."""
    sockets: list[socket.socket] = []
    port = 0
    for _ in range(WORKERS):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        sock.setblocking(False)
        port = sock.getsockname()[1]
        sockets.append(sock)
    yield sockets
    for sock in sockets:
        sock.close()


def _landings(group: list[socket.socket], source: str, count: int) -> list[int]:
    """How many of ``count`` connections from ``source`` each socket accepted."""
    port = group[0].getsockname()[1]
    clients = []
    for _ in range(count):
        client = socket.socket()
        client.bind((source, 0))
        client.connect(("127.0.0.1", port))
        clients.append(client)
    accepted = [0] * len(group)
    for i, sock in enumerate(group):
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                break
            conn.close()
            accepted[i] += 1
    for client in clients:
        client.close()
    assert sum(accepted) == count
    return accepted


def test_without_the_program_one_client_spreads_over_the_workers(
        group: list[socket.socket]) -> None:
    assert all(_landings(group, "127.0.0.2", 40))  # by source port too: both get some


def test_the_program_keeps_each_client_address_on_one_worker(
        group: list[socket.socket]) -> None:
    keep_clients_together(group, WORKERS)
    seen = []
    for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
        accepted = _landings(group, source, 12)
        assert sorted(accepted) == [0, 12], (source, accepted)
        seen.append(accepted.index(12))
    assert set(seen) == {0, 1}  # consecutive addresses: both workers serve clients


def test_a_free_address_is_claimed_and_port_0_fixed() -> None:
    claimed = claim_port("ssh", "127.0.0.1:0")
    host, _, port = claimed.rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0
    with socket.socket() as probe:  # and it is free for the workers to bind
        probe.bind(("127.0.0.1", int(port)))


def test_an_address_in_use_is_one_line(group: list[socket.socket]) -> None:
    port = group[0].getsockname()[1]
    with pytest.raises(ConfigError) as caught:
        claim_port("webproxy", f"127.0.0.1:{port}")
    assert str(caught.value) == (f"[webproxy] listen = '127.0.0.1:{port}': cannot listen:"
                                 " Address already in use")


def test_an_unresolvable_host_is_one_line() -> None:
    with pytest.raises(ConfigError) as caught:
        claim_port("http", "no-such-host.invalid:8443")
    assert str(caught.value).startswith(
        "[http] listen = 'no-such-host.invalid:8443': cannot listen: ")
