"""The interactive player: pause, seek both ways, quit, and timing, with no real waiting."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

from broker.aio import within
from broker.recording import Cast
from broker.recording.player import RESET, Player, Timeline, play

CAST = Cast(header={"version": 2, "width": 80, "height": 24},
            events=[(1.0, "o", "a"), (2.0, "o", "b"), (3.0, "i", "x"), (9.0, "o", "c"),
                    (20.0, "o", "d")])


def shown(out: io.BytesIO) -> str:
    return out.getvalue().decode()


def test_timeline_caps_idle_gaps_and_applies_speed() -> None:
    timeline = Timeline.of(CAST, speed=2.0, max_idle=2.0)
    assert timeline.texts == ["a", "b", "c", "d"]
    assert timeline.times == [0.5, 1.0, 2.0, 3.0]


def test_advance_shows_events_as_they_fall_due_and_pause_stops_time() -> None:
    out = io.BytesIO()
    player = Player(Timeline.of(CAST, max_idle=None), out)
    player.advance(1.5)
    assert shown(out) == "a"
    player.key(" ")
    player.advance(100)
    assert shown(out) == "a" and player.next_due() is None
    player.key(" ")
    player.advance(0.5)
    assert shown(out) == "ab"


def test_seek_forward_then_back_redraws_from_a_reset_screen() -> None:
    out = io.BytesIO()
    player = Player(Timeline.of(CAST, max_idle=None), out)
    player.key("\x1b[C")  # +5 s
    assert shown(out) == "ab" and player.position == 5.0
    player.key("\x1b[C")  # +5 s -> 10 s
    assert shown(out) == "abc"
    player.key("\x1b[D")  # back to 5 s: only a and b remain on screen
    assert shown(out).endswith(RESET + "ab")
    player.key("q")
    assert player.done


async def test_play_runs_to_the_end_with_keys_and_a_fake_clock() -> None:
    now = [0.0]

    async def keys() -> AsyncIterator[str]:
        yield "\x1b[C"
        yield "\x1b[C"
        yield "\x1b[C"
        yield "\x1b[C"

    out = io.BytesIO()
    player = Player(Timeline.of(CAST, max_idle=None), out)
    await within(5, play(player, keys(), lambda: now[0]))
    assert player.done and shown(out) == "abcd"
