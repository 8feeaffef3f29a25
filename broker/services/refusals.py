"""Every refusal is audited, and a flood of them cannot fill the log.

Each (source, kind) pair gets ``burst`` full audit rows per ``interval``; past that the
refusals are counted, and the count is written as one ``refusal.suppressed`` row when the
pair's interval is over (at its next refusal, at :meth:`RefusalLog.flush`, or when the table
of sources is full and the oldest pair is evicted). Nothing is dropped silently: every
refusal is either its own row or part of a summary's count.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from broker import metrics
from broker.services.context import Context
from broker.services.sessions import audit_event

log = structlog.get_logger("broker.refusals")

DEFAULT_INTERVAL = 60.0  # seconds
DEFAULT_BURST = 5
MAX_SOURCES = 10_000


@dataclass
class _Window:
    started: float
    written: int = 0
    suppressed: int = 0
    actor: str = ""
    last: dict[str, Any] = field(default_factory=dict)


class RefusalLog:
    """Rate-limited audit of refusals, one per process (SSH listener, web app)."""

    def __init__(self, ctx: Context, *, interval: float = DEFAULT_INTERVAL,
                 burst: int = DEFAULT_BURST, max_sources: int = MAX_SOURCES,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.interval, self.burst, self.max_sources = interval, burst, max_sources
        self._now = monotonic
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()

    async def refused(self, kind: str, actor: str, source: str, subject: str | None = None,
                      **data: Any) -> bool:
        """Audit one refusal of ``kind`` from ``source`` (an address); True if it got a row
        of its own, False if it was counted into the next summary."""
        metrics.refused(kind, data.get("reason"))
        key = (source, kind)
        now = self._now()
        window = self._windows.get(key)
        if window is not None and now - window.started >= self.interval:
            del self._windows[key]
            await self._summarise(key, window)
            window = None
        if window is None:
            while len(self._windows) >= self.max_sources:
                old_key, old = self._windows.popitem(last=False)
                await self._summarise(old_key, old)
            window = self._windows[key] = _Window(started=now)
        if window.written < self.burst:
            window.written += 1
            await audit_event(self.ctx, kind, actor, subject, source=source, **data)
            return True
        window.suppressed += 1
        window.actor, window.last = actor, {"subject": subject, **data}
        return False

    async def flush(self) -> None:
        """Write the summary of every pair with refusals still uncounted (at shutdown)."""
        windows, self._windows = self._windows, OrderedDict()
        for key, window in windows.items():
            await self._summarise(key, window)

    async def _summarise(self, key: tuple[str, str], window: _Window) -> None:
        if not window.suppressed:
            return
        source, kind = key
        await audit_event(self.ctx, "refusal.suppressed", window.actor or "unknown", None,
                          source=source, refusal=kind, count=window.suppressed,
                          interval_s=self.interval, last=window.last)
