"""A live session's supervision: who from the hospital is watching, and whether the
technician's input may reach the device.

Every live SSH session on this node has one (see ``BrokerConnection.supervision``). A staff
member with the approver, auditor or admin role joins from the portal's Supervise page (an
open event stream is being present); they can pause the technician's input, resume it, or end
the session. Input is open while nobody paused it and, when the policy says
``supervision: required``, while at least one supervisor is present. When the last supervisor
leaves, a pause they left behind is lifted (a required session is held anyway until someone
joins again).

Each join, leave, pause, resume and end is reported to ``on_event`` (the connection audits it
and marks it in the recording).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

from broker.aio import within

EventSink = Callable[[str, str], Awaitable[None]]  # (kind, staff name)

JOINED = "supervision.joined"
LEFT = "supervision.left"
PAUSED = "supervision.paused"
RESUMED = "supervision.resumed"
ENDED = "supervision.ended"


async def _nothing(_kind: str, _who: str) -> None:
    return None


class Supervision:
    def __init__(self, required: bool = False, on_event: EventSink = _nothing) -> None:
        self.required = required
        self.on_event = on_event
        self._present: Counter[str] = Counter()
        self.paused_by: str | None = None
        self.closed = False  # the session ended: nothing waits any more
        self._changed = asyncio.Event()

    # -- state -------------------------------------------------------------------------------
    @property
    def supervisors(self) -> list[str]:
        return sorted(self._present)

    @property
    def present(self) -> bool:
        return bool(self._present)

    @property
    def input_open(self) -> bool:
        return self.paused_by is None and (self.present or not self.required)

    def state(self) -> str:
        """One word for pages and JSON: waiting | paused | supervised | open."""
        if self.paused_by is not None:
            return "paused"
        if self.present:
            return "supervised"
        return "waiting" if self.required else "open"

    def _signal(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float) -> None:
        """Return at the next change, or after ``timeout`` seconds."""
        changed = self._changed
        try:
            await within(timeout, changed.wait())
        except TimeoutError:
            return

    async def wait_open(self, timeout: float) -> bool:
        """Wait until input is open; False when ``timeout`` seconds pass first."""
        return await self._wait_until(lambda: self.input_open, timeout)

    async def wait_present(self, timeout: float) -> bool:
        """Wait until a supervisor is present; False when ``timeout`` seconds pass first."""
        return await self._wait_until(lambda: self.present, timeout)

    async def _wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if self.closed:
                return False
            left = deadline - loop.time()
            if left <= 0:
                return False
            await self.wait_change(left)
        return True

    def close(self) -> None:
        self.closed = True
        self._signal()

    # -- what supervisors do ------------------------------------------------------------------
    async def join(self, who: str) -> None:
        first = who not in self._present
        self._present[who] += 1
        self._signal()
        if first:
            await self.on_event(JOINED, who)

    async def leave(self, who: str) -> None:
        if who not in self._present:
            return
        self._present[who] -= 1
        if self._present[who] > 0:
            return
        del self._present[who]
        if not self._present:
            self.paused_by = None  # nobody left to resume it; a required session waits anyway
        self._signal()
        await self.on_event(LEFT, who)

    async def pause(self, who: str) -> bool:
        """False when input is already paused."""
        if self.paused_by is not None:
            return False
        self.paused_by = who
        self._signal()
        await self.on_event(PAUSED, who)
        return True

    async def resume(self, who: str) -> bool:
        """False when input was not paused."""
        if self.paused_by is None:
            return False
        self.paused_by = None
        self._signal()
        await self.on_event(RESUMED, who)
        return True
