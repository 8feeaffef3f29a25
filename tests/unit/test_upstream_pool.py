"""The device-connection pool's rules ([ssh] device_keepalive), on real asyncssh connections
to a real sshd: what is kept, what is closed, and what a reused connection must match.
How sessions use it end to end: tests/integration/test_device_keepalive.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import asyncssh
import pytest

from broker.aio import within
from broker.services.sessions import DeviceLogin
from broker.ssh.upstream_pool import Lease, UpstreamPool, login_key
from tests.integration.harness import SSHD, SshdDevice

pytestmark = pytest.mark.skipif(not Path(SSHD).exists(), reason="sshd is missing (make test"
                                " installs OpenSSH)")

LOGIN = DeviceLogin(7, "pump", "127.0.0.1", 22, "svc", "key", b"secret-1", "ssh-ed25519 AAAA")


@pytest.fixture(scope="module")
def device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshdDevice]:
    sshd = SshdDevice(tmp_path_factory.mktemp("sshd")).start()
    yield sshd
    sshd.stop()


@pytest.fixture
async def connect(device: SshdDevice) -> AsyncIterator[object]:
    opened: list[asyncssh.SSHClientConnection] = []

    async def new_lease(key: tuple[str, int, str] = ("tech", 7, "k")) -> Lease:
        connection = await asyncssh.connect(
            "127.0.0.1", device.port, username=device.user, known_hosts=None,
            client_keys=[str(device.login_key)], agent_path=None, config=None)
        opened.append(connection)
        return Lease(connection, key)

    yield new_lease
    for connection in opened:
        connection.close()


async def closed_soon(connection: asyncssh.SSHClientConnection) -> bool:
    await within(5, connection.wait_closed())
    return connection.is_closed()


async def test_a_clean_end_keeps_the_connection_until_the_keepalive_lapses(connect) -> None:
    pool = UpstreamPool(keepalive=0.3)
    lease = await connect()
    result = await lease.connection.run("true")
    assert result.exit_status == 0
    await pool.release(lease, reusable=True)
    assert pool.idle == 1 and not lease.connection.is_closed()
    assert await closed_soon(lease.connection)
    assert pool.idle == 0


@pytest.mark.parametrize("keepalive, reusable", [(0, True), (10, False)])
async def test_no_keepalive_or_a_cut_session_closes_it(connect, keepalive: float,
                                                       reusable: bool) -> None:
    pool = UpstreamPool(keepalive=keepalive)
    lease = await connect()
    await pool.release(lease, reusable=reusable)
    assert pool.idle == 0
    assert await closed_soon(lease.connection)


async def test_a_channel_still_open_on_the_device_closes_it(connect) -> None:
    """A process (or a forward) the session left running must not ride into the next
    session: the connection is closed, not kept."""
    pool = UpstreamPool(keepalive=10)
    lease = await connect()
    running = await lease.connection.create_process("sleep 30")
    await pool.release(lease, reusable=True)
    assert pool.idle == 0
    assert await closed_soon(lease.connection)
    assert running.channel.get_exit_status() is None  # it never finished: it was cut off


async def test_close_ends_the_idle_connections_and_refuses_later_ones(connect) -> None:
    pool = UpstreamPool(keepalive=10)
    kept, late = await connect(), await connect()
    await pool.release(kept, reusable=True)
    assert pool.idle == 1
    pool.close()
    assert pool.idle == 0 and await closed_soon(kept.connection)
    await pool.release(late, reusable=True)
    assert pool.idle == 0 and await closed_soon(late.connection)


async def test_the_pool_keeps_at_most_its_share(connect) -> None:
    pool = UpstreamPool(keepalive=10, per_key=2, total=3)
    mine = [await connect(("tech", 7, "k")) for _ in range(3)]
    theirs = [await connect(("other", 7, "k")) for _ in range(2)]
    for lease in [*mine, *theirs]:
        await pool.release(lease, reusable=True)
    assert pool.idle == 3  # two of mine (per key), one of theirs (in all)
    assert await closed_soon(mine[2].connection) and await closed_soon(theirs[1].connection)
    pool.close()


def test_a_reused_connection_must_match_the_credential_host_key_and_technician() -> None:
    key = login_key("tech", LOGIN)
    assert login_key("tech", replace(LOGIN)) == key
    for changed in (replace(LOGIN, secret=b"secret-2"),  # rotated
                    replace(LOGIN, host_key="ssh-ed25519 BBBB"),  # re-pinned
                    replace(LOGIN, host="127.0.0.2"), replace(LOGIN, port=2222),
                    replace(LOGIN, user="root"), replace(LOGIN, device_id=8)):
        assert login_key("tech", changed) != key, changed
    assert login_key("other", LOGIN) != key
    assert b"secret-1".hex() not in repr(key) and "secret-1" not in repr(key)


async def test_a_pool_closed_while_a_release_waits_keeps_nothing(connect) -> None:
    """The drain closes the pool while a session's release still waits for the device's
    last channel to close: that connection is closed too, not kept past the close."""
    pool = UpstreamPool(keepalive=10)
    lease = await connect()
    await lease.connection.create_process("sleep 0.3")
    releasing = asyncio.ensure_future(pool.release(lease, reusable=True))
    await asyncio.sleep(0.05)
    pool.close()
    await releasing
    assert pool.idle == 0 and await closed_soon(lease.connection)
