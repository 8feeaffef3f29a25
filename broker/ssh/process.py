"""The server-side session object for technician channels.

asyncssh's own process session answers an ``sftp`` subsystem request only with a local SFTP
server and refuses other subsystems; a relay needs every channel, subsystems included, in
its own handler, where it relays SFTP to the device and refuses the rest with a message.
This subclass does that and nothing else (it touches asyncssh 2.x internals: ``_chan``,
``_conn``; the dependency is pinned below 3).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import asyncssh
from asyncssh.constants import EXTENDED_DATA_STDERR
from asyncssh.sftp import MIN_SFTP_VERSION
from asyncssh.stream import SSHReader, SSHWriter

Handler = Callable[[asyncssh.SSHServerProcess[bytes]], Awaitable[None]]


class RelayProcess(asyncssh.SSHServerProcess[bytes]):
    def __init__(self, handler: Handler) -> None:
        super().__init__(handler, None, MIN_SFTP_VERSION, False)

    def subsystem_requested(self, subsystem: str) -> bool:
        return True

    def session_started(self) -> None:
        chan, conn = self._chan, self._conn
        assert chan is not None and conn is not None
        stdin = SSHReader[bytes](self, chan)
        stdout = SSHWriter[bytes](self, chan)
        stderr = SSHWriter[bytes](self, chan, EXTENDED_DATA_STDERR)
        handler = self._start_process(stdin, stdout, stderr)
        if inspect.isawaitable(handler):
            conn.create_task(handler, stdin.logger)
