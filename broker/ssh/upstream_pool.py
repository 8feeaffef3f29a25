"""Device connections kept warm between one technician's sessions.

A technician who runs ``scp`` in a loop, or a script of short ``ssh`` commands, would make the
broker log in to the device anew for every one: a key exchange and an authentication on both
sides, the device forking a login each time. Like OpenSSH's ``ControlPersist``, the broker
keeps an upstream connection a few seconds after its session ended cleanly ([ssh]
``device_keepalive``, default 10 s; 0 turns it off) and gives it to the same technician's next
session on the same device.

What makes a connection reusable is narrow, and everything else closes it:

- one session at a time: a leased connection is never shared between live sessions;
- the session ended by itself (a cut, revoke, kill or drain closes the connection), and every
  channel it opened on the device is closed (a forward or a process still open closes it);
- the same technician, device, address, account, credential and pinned host key: a rotation
  or a re-pinned host key starts a new key, and the old connections are never handed out again
  (they close when idle);
- still open, and idle for less than the keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace

import asyncssh
import structlog

from broker import metrics
from broker.aio import within
from broker.services.context import Context
from broker.services.sessions import DeviceLogin, device_login
from broker.ssh.upstream import connect_login

log = structlog.get_logger("broker.ssh")

PER_KEY = 16  # idle connections kept for one technician and device
TOTAL = 256  # idle connections kept by one broker process
CHANNELS_SETTLE = 1.0  # seconds a released connection's last channels get to finish closing


def login_key(technician: str, login: DeviceLogin) -> tuple[str, int, str]:
    """What a reused connection must match: the credential and host key only as a digest."""
    digest = hashlib.sha256()
    for part in (login.host, str(login.port), login.user, login.kind, login.host_key or ""):
        digest.update(part.encode() + b"\0")
    digest.update(login.secret)
    return technician, login.device_id, digest.hexdigest()


@dataclass
class Lease:
    """One session's use of a device connection."""

    connection: asyncssh.SSHClientConnection
    key: tuple[str, int, str]


@dataclass(eq=False)
class _Idle:
    connection: asyncssh.SSHClientConnection
    timer: asyncio.TimerHandle | None = field(default=None)


class UpstreamPool:
    def __init__(self, keepalive: float, *, per_key: int = PER_KEY, total: int = TOTAL,
                 connect: Callable[[Context, DeviceLogin],
                                   Awaitable[asyncssh.SSHClientConnection]] | None = None
                 ) -> None:
        self.keepalive, self.per_key, self.total = keepalive, per_key, total
        self._connect = connect or connect_login
        self._idle: dict[tuple[str, int, str], list[_Idle]] = {}
        self._count = 0
        self._closed = False

    @property
    def idle(self) -> int:
        return self._count

    async def acquire(self, ctx: Context, device_id: int, technician: str) -> Lease:
        """A connection to the device for ``technician``'s session: a warm one if there is,
        else a new login (raises :class:`broker.errors.DeviceError` like a login)."""
        login = await device_login(ctx, device_id)
        key = login_key(technician, login)
        while self._idle.get(key):
            entry = self._take(key)
            if not entry.connection.is_closed():
                metrics.DEVICE_LOGINS.labels("reused").inc()
                return Lease(entry.connection, key)
        connection = await self._connect(ctx, login)
        metrics.DEVICE_LOGINS.labels("new").inc()
        pinned = connection.get_server_host_key()
        if login.host_key is None and pinned is not None:  # first contact pinned it just now
            key = login_key(technician, replace(
                login, host_key=pinned.export_public_key().decode().strip()))
        return Lease(connection, key)

    async def release(self, lease: Lease, *, reusable: bool) -> None:
        """The session is over: keep the connection for the technician's next session, or
        close it."""
        connection = lease.connection
        if not reusable or self.keepalive <= 0 or not await _channels_closed(connection):
            connection.close()
            return
        if (self._closed or connection.is_closed()  # (both may have changed meanwhile)
                or len(self._idle.get(lease.key, ())) >= self.per_key
                or self._count >= self.total):
            connection.close()
            return
        entry = _Idle(connection)
        entry.timer = asyncio.get_running_loop().call_later(
            self.keepalive, self._expire, lease.key, entry)
        self._idle.setdefault(lease.key, []).append(entry)
        self._counted(+1)

    def close(self) -> None:
        """Close every idle connection; later releases close theirs."""
        self._closed = True
        for key in list(self._idle):
            while self._idle.get(key):
                self._take(key).connection.close()

    def _take(self, key: tuple[str, int, str]) -> _Idle:
        """The most recently released connection (the older ones expire first)."""
        entries = self._idle[key]
        entry = entries.pop()
        if not entries:
            del self._idle[key]
        self._counted(-1)
        if entry.timer is not None:
            entry.timer.cancel()
        return entry

    def _counted(self, change: int) -> None:
        self._count += change
        metrics.DEVICE_CONNECTIONS_IDLE.set(self._count)

    def _expire(self, key: tuple[str, int, str], entry: _Idle) -> None:
        entries = self._idle.get(key, [])
        if entry in entries:
            entries.remove(entry)
            self._counted(-1)
            if not entries:
                del self._idle[key]
        entry.connection.close()


async def _channels_closed(connection: asyncssh.SSHClientConnection) -> bool:
    """Whether every channel on ``connection`` has closed, given a moment to finish (a
    process's close crosses the network after its exit status). asyncssh keeps no public
    list of a connection's channels; ``_channels`` is checked against the pinned version
    (:mod:`broker.ssh.asyncssh_fixes`)."""
    open_channels = getattr(connection, "_channels", None)
    if open_channels is None:
        return False  # not the asyncssh we know: never reuse
    if open_channels:
        with contextlib.suppress(TimeoutError):
            await within(CHANNELS_SETTLE, asyncio.gather(
                *(channel.wait_closed() for channel in list(open_channels.values()))))
    return not open_channels
