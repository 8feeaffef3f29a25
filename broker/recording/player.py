"""An interactive terminal player: the recorded output with its timing, and keys to pause,
seek and quit (space: pause/resume, right/left arrow: +/-5 s, q: quit).

The player is a pure state machine over the output timeline; the CLI feeds it keys from a
raw-mode terminal and real time, tests feed both by hand.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from .reader import Cast
from .replay import Sink, frames

SEEK_STEP = 5.0
RESET = "\x1bc"  # full terminal reset before redrawing up to a seek target
KEYS = {" ": "pause", "q": "quit", "\x1b[C": "forward", "\x1b[D": "back", "\x03": "quit"}


@dataclass(frozen=True)
class Timeline:
    """Output events on the playback clock (idle gaps capped, divided by speed)."""

    times: list[float]
    texts: list[str]

    @classmethod
    def of(cls, cast: Cast, speed: float = 1.0, max_idle: float | None = 2.0) -> Timeline:
        times, texts, now = [], [], 0.0
        for delay, text in frames(cast, speed, max_idle):
            now += delay
            times.append(now)
            texts.append(text)
        return cls(times, texts)

    @property
    def duration(self) -> float:
        return self.times[-1] if self.times else 0.0


class Player:
    def __init__(self, timeline: Timeline, out: Sink) -> None:
        self.timeline, self.out = timeline, out
        self.position = 0.0  # playback time shown so far
        self.index = 0  # next event to show
        self.paused = False
        self.done = False

    def key(self, key: str) -> None:
        action = KEYS.get(key)
        if action == "pause":
            self.paused = not self.paused
        elif action == "quit":
            self.done = True
        elif action == "forward":
            self.seek(self.position + SEEK_STEP)
        elif action == "back":
            self.seek(self.position - SEEK_STEP)

    def seek(self, target: float) -> None:
        target = min(max(target, 0.0), self.timeline.duration)
        end = bisect.bisect_right(self.timeline.times, target)
        if end < self.index:  # backwards: redraw from a clean screen
            self._write(RESET + "".join(self.timeline.texts[:end]))
        else:
            self._write("".join(self.timeline.texts[self.index:end]))
        self.index, self.position = end, target
        self.done = self.done or end >= len(self.timeline.times)

    def advance(self, elapsed: float) -> None:
        """Play ``elapsed`` seconds of playback time (nothing while paused)."""
        if self.paused or self.done:
            return
        self.seek(self.position + elapsed)

    def next_due(self) -> float | None:
        """Seconds until the next event is due, or None when paused or finished."""
        if self.paused or self.done or self.index >= len(self.timeline.times):
            return None
        return max(self.timeline.times[self.index] - self.position, 0.0)

    def _write(self, text: str) -> None:
        if text:
            self.out.write(text.encode("utf-8"))
            flush = getattr(self.out, "flush", None)
            if flush is not None:
                flush()


async def play(player: Player, keys: AsyncIterator[str],
               clock: Callable[[], float]) -> None:
    """Run ``player`` against real (or fake) time and a stream of keys until it finishes."""
    key_task: asyncio.Future[str] | None = None
    keys_open, last = True, clock()
    try:
        while not player.done:
            if keys_open and key_task is None:
                key_task = asyncio.ensure_future(anext(keys))
            due = player.next_due()
            finished: set[asyncio.Future[str]] = set()
            if key_task is not None:
                finished, _ = await asyncio.wait({key_task}, timeout=due)
            elif due is None:
                return  # paused with no more keys to resume it
            else:
                await asyncio.sleep(due)
            now = clock()
            player.advance(now - last)
            last = now
            if key_task is not None and key_task in finished:
                try:
                    player.key(key_task.result())
                except StopAsyncIteration:
                    keys_open = False
                key_task = None
    finally:
        if key_task is not None:
            key_task.cancel()


async def terminal_keys(fd: int) -> AsyncIterator[str]:
    """Keys typed on the terminal ``fd`` (already in cbreak mode), as they arrive."""
    import os

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(fd, lambda: queue.put_nowait(os.read(fd, 16).decode(errors="replace")))
    try:
        while True:
            yield await queue.get()
    finally:
        loop.remove_reader(fd)


def play_in_terminal(cast: Cast, speed: float, out: Sink, fd: int) -> None:
    """Interactive playback on a terminal: space pauses, arrows seek 5 s, q quits."""
    import termios
    import time
    import tty

    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)
    try:
        player = Player(Timeline.of(cast, speed), out)
        asyncio.run(play(player, terminal_keys(fd), time.monotonic))
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
