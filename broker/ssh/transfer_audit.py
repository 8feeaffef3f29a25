"""The refusals and scan verdicts of one file-transfer channel: logged, shown to the
technician where the client would not (sftp prints only "Permission denied"), audited."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import asyncssh
import structlog

from broker.errors import BrokerError

log = structlog.get_logger("broker.ssh")


class TransferAudit:
    def __init__(self, audit: Callable[..., Awaitable[None]], session: str | None,
                 stderr: asyncssh.SSHWriter[bytes] | None) -> None:
        """``audit(kind, **data)`` writes an audit event; ``stderr``: where to show each
        message too (the SFTP channel's), or None."""
        self._audit, self._session, self._stderr = audit, session, stderr
        self._pending: list[tuple[str, str, str, str]] = []

    def add(self, message: str, op: str, path: str, event: str = "file.denied") -> None:
        """Note one event (called from the guards, which cannot wait); :meth:`flush` soon."""
        self._pending.append((message, op, path, event))

    async def flush(self) -> None:
        while self._pending:
            message, op, path, event = self._pending.pop(0)
            log.info("file transfer event", kind=event, reason=message, session=self._session)
            if self._stderr is not None:
                with contextlib.suppress(BrokenPipeError, asyncssh.Error):
                    self._stderr.write(f"{message}\n".encode("utf-8", "replace"))
            with contextlib.suppress(BrokerError, OSError):
                await self._audit(event, operation=op, path=path[:1024], reason=message[:1024])
