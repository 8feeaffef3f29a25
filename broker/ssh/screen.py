"""The technician's terminal as the device draws it (pyte), for the line the shell shows.

Every byte the device sends to the terminal goes through a pyte screen of the terminal's size.
When the technician starts typing a line, the cursor's position is remembered (the end of the
prompt); when they submit it, the text from there to the cursor's row is the line as the
terminal shows it, whatever keys produced it (history recall, Tab completion, Ctrl-R). Rows
scrolled away meanwhile are followed; a start scrolled off the screen falls back to the top.

Output is kept and drawn when a line starts or is read, at most its last :data:`DRAW_LIMIT`
bytes: after more output than that, the screen is redrawn from a blank one with those bytes
and the line's start is forgotten (the whole cursor row counts, prompt included: that can
only refuse more).
"""

from __future__ import annotations

import asyncio
import time

import pyte
from pyte.screens import Margins

SETTLE_QUIET = 0.15  # seconds without device output after which the echo counts as drawn
SETTLE_MAX = 1.0  # never wait longer than this for the echo
# Output is drawn only when a line is read, and only its last bytes: pyte is pure Python and
# draws about 0.1-0.5 MB/s, so drawing all of a large `cat` would stall the relay.
DRAW_LIMIT = 16 * 1024


class _Screen(pyte.Screen):
    """A pyte screen counting the rows it scrolled off the top."""

    scrolled = 0

    def index(self) -> None:
        _top, bottom = self.margins or Margins(0, self.lines - 1)
        if self.cursor.y == bottom:
            self.scrolled += 1
        super().index()


class TerminalView:
    def __init__(self, width: int, height: int) -> None:
        self.screen = _Screen(max(width, 20), max(height, 2))
        self.stream = pyte.ByteStream(self.screen)
        self.last_output = time.monotonic()
        self.last_line_feed = 0.0  # when the device last moved the cursor to a new row
        self._start: tuple[int, int] | None = None  # (scroll count + row, column)
        self._undrawn = bytearray()
        self._overflowed = False

    def output(self, data: bytes) -> None:
        self._undrawn += data
        if len(self._undrawn) > DRAW_LIMIT:
            del self._undrawn[:-DRAW_LIMIT]
            self._overflowed = True
        self.last_output = time.monotonic()
        if b"\n" in data:
            self.last_line_feed = self.last_output

    def _draw(self) -> None:
        if self._overflowed:
            self.screen.reset()
            self._start, self._overflowed = None, False
        if self._undrawn:
            self.stream.feed(bytes(self._undrawn))
            self._undrawn.clear()

    def resize(self, width: int, height: int) -> None:
        self._draw()
        self.screen.resize(max(height, 2), max(width, 20))
        self._start = None  # a resize redraws: the line starts where the cursor is next

    def line_started(self) -> None:
        """The technician typed the first key of a line: the prompt ends at the cursor."""
        self._draw()
        if self._start is None:
            cursor = self.screen.cursor
            self._start = (self.screen.scrolled + cursor.y, cursor.x)

    def line_done(self) -> None:
        self._start = None

    def shown(self) -> list[str]:
        """The line as the terminal shows it: the whole text from the line's start to the
        cursor's row (wrapped rows joined), then each of those rows on its own."""
        self._draw()
        screen = self.screen
        cursor_row = screen.cursor.y
        if self._start is None:
            row, column = cursor_row, 0
        else:
            row, column = self._start[0] - screen.scrolled, self._start[1]
            if row < 0:
                row, column = 0, 0
            if row > cursor_row:
                row, column = cursor_row, 0
        rows = [screen.display[index] for index in range(row, cursor_row + 1)]
        rows[0] = rows[0][column:]
        joined = "".join(rows).rstrip()
        return [joined, *(r.rstrip() for r in rows)] if len(rows) > 1 else [joined]

    async def settled(self, since: float, limit: float = SETTLE_MAX) -> None:
        """Wait until the device has drawn something after ``since`` (monotonic) and then
        been quiet a moment, so its echo is on the screen; at most ``limit`` seconds."""
        deadline = since + limit
        while True:
            now = time.monotonic()
            quiet = now - self.last_output
            if (self.last_output > since and quiet >= SETTLE_QUIET) or now >= deadline:
                return
            wait = SETTLE_QUIET - quiet if self.last_output > since else SETTLE_QUIET
            await asyncio.sleep(max(0.01, min(wait, deadline - now)))
