"""Test doubles for code that takes a clock or byte streams (like ``structlog.testing``).

* :class:`FakeClock` implements :class:`broker.clock.Clock`. Time stands still until the test
  moves it with :meth:`FakeClock.advance` or :meth:`FakeClock.set`; ``sleep_until`` blocks on a
  future that moving the clock resolves, so nothing ever sleeps for real.
* :class:`MemoryReceiveStream` and :class:`MemorySendStream` implement the relay's
  ``ReceiveStream`` and ``SendStream`` protocols (``broker.ssh.streams``) in memory.
* :class:`MemoryEndpoint` implements a protocol's side of an access session
  (:class:`broker.services.access_session.Endpoint`): it keeps the lines it was told and
  the reason it was cut, and closes the session when cut, as a protocol does.

Moving the clock only *wakes* sleepers; they run when the test next yields to the event loop
(``await asyncio.sleep(0)``, or awaiting whatever the sleeper does next).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

__all__ = ["FakeClock", "MemoryEndpoint", "MemoryReceiveStream", "MemorySendStream"]

DEFAULT_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)


def _aware(moment: datetime, what: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {moment.isoformat()}")
    return moment


@dataclass(eq=False)
class _Sleeper:
    deadline: datetime
    wakeup: asyncio.Future[None]


class FakeClock:
    """A :class:`broker.clock.Clock` whose time moves only when the test says so."""

    def __init__(self, start: datetime = DEFAULT_START) -> None:
        self._now = _aware(start, "the start time")
        self._sleepers: list[_Sleeper] = []
        self._changed: asyncio.Event | None = None

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, deadline: datetime) -> None:
        """Return once the fake time is at or past ``deadline``; cancellable."""
        _aware(deadline, "the deadline")
        if deadline <= self._now:
            await asyncio.sleep(0)  # a real sleep_until yields too
            return
        sleeper = _Sleeper(deadline, asyncio.get_running_loop().create_future())
        self._sleepers.append(sleeper)
        self._notify()
        try:
            await sleeper.wakeup
        finally:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)
            self._notify()

    def advance(self, delta: timedelta | float) -> datetime:
        """Move time forward by ``delta`` (a timedelta or seconds); return the new time."""
        step = delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
        if step < timedelta(0):
            raise ValueError(f"a clock only advances forwards, not by {step}")
        return self.set(self._now + step)

    def set(self, moment: datetime) -> datetime:
        """Jump to ``moment`` (backwards too, like a wall clock stepped by NTP)."""
        self._now = _aware(moment, "the new time")
        for sleeper in list(self._sleepers):
            if sleeper.deadline <= self._now:
                self._sleepers.remove(sleeper)
                if not sleeper.wakeup.done():
                    sleeper.wakeup.set_result(None)
        self._notify()
        return self._now

    @property
    def sleepers(self) -> int:
        """How many ``sleep_until`` calls are blocked right now."""
        return len(self._sleepers)

    @property
    def next_deadline(self) -> datetime | None:
        """The earliest deadline anyone is sleeping until."""
        return min((s.deadline for s in self._sleepers), default=None)

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Wait until at least ``count`` tasks are blocked in :meth:`sleep_until`.

        Wrap it in ``asyncio.timeout`` in tests: it waits for as long as it takes.
        """
        while len(self._sleepers) < count:
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()


class MemoryReceiveStream:
    """A ``ReceiveStream``: hands out queued chunks, then ``b""`` once closed and drained."""

    def __init__(self, chunks: Iterable[bytes] = (), *, closed: bool = False) -> None:
        self._chunks: deque[bytes] = deque()
        self._closed = False
        self._ready = asyncio.Event()
        for chunk in chunks:
            self.feed(chunk)
        if closed:
            self.close()

    def feed(self, data: bytes) -> None:
        """Queue one chunk (an empty one is dropped: ``b""`` means end of file)."""
        if self._closed:
            raise RuntimeError("feed() after close(): the stream is at end of file")
        if data:
            self._chunks.append(bytes(data))
            self._ready.set()

    def close(self) -> None:
        """End of file: ``receive`` returns ``b""`` once the queued chunks are read."""
        self._closed = True
        self._ready.set()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        """Chunks queued and not yet received."""
        return len(self._chunks)

    async def receive(self) -> bytes:
        while not self._chunks:
            if self._closed:
                return b""
            self._ready.clear()
            await self._ready.wait()
        return self._chunks.popleft()


@dataclass
class MemorySendStream:
    """A ``SendStream`` that keeps what it is sent; ``send`` after ``send_eof`` is an error."""

    chunks: list[bytes] = field(default_factory=list)
    eof: bool = False

    async def send(self, data: bytes) -> None:
        if self.eof:
            raise RuntimeError("send() after send_eof()")
        self.chunks.append(bytes(data))
        await asyncio.sleep(0)  # a real sink awaits its drain: let other tasks run

    async def send_eof(self) -> None:
        self.eof = True

    @property
    def data(self) -> bytes:
        """Everything sent so far, joined."""
        return b"".join(self.chunks)


@dataclass(eq=False)
class MemoryEndpoint:
    """A protocol side that remembers: ``notices`` told, ``cuts`` (reasons, in order).
    Set ``session`` to the access session it belongs to, so that a cut closes it."""

    notices: list[str] = field(default_factory=list)
    cuts: list[str] = field(default_factory=list)
    session: AccessSession | None = None

    async def notice(self, text: str) -> None:
        self.notices.append(text)

    async def cut(self, reason: str) -> None:
        self.cuts.append(reason)
        if self.session is not None:
            await self.session.close(reason)


if TYPE_CHECKING:  # the doubles satisfy the protocols they stand in for
    from broker.clock import Clock
    from broker.services.access_session import AccessSession, Endpoint
    from broker.ssh.streams import ReceiveStream, SendStream

    _clock: Clock = FakeClock()
    _receive: ReceiveStream = MemoryReceiveStream()
    _send: SendStream = MemorySendStream()
    _endpoint: Endpoint = MemoryEndpoint()
