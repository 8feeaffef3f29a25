"""broker.testing: the fake clock and the memory streams other tests rely on."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from broker.aio import within
from broker.ssh.streams import pump
from broker.testing import FakeClock, MemoryReceiveStream, MemorySendStream

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_time_stands_still_until_moved() -> None:
    clock = FakeClock(T0)
    assert clock.now() == T0
    await asyncio.sleep(0.01)
    assert clock.now() == T0
    assert clock.advance(timedelta(minutes=5)) == T0 + timedelta(minutes=5)
    assert clock.advance(30) == T0 + timedelta(minutes=5, seconds=30)
    assert clock.set(T0) == T0 and clock.now() == T0  # set may step back


async def test_sleep_until_wakes_when_time_reaches_the_deadline() -> None:
    clock = FakeClock(T0)
    woke: list[datetime] = []

    async def sleeper(deadline: datetime) -> None:
        await clock.sleep_until(deadline)
        woke.append(clock.now())

    tasks = [asyncio.create_task(sleeper(T0 + timedelta(seconds=s))) for s in (10, 20)]
    async with asyncio.timeout(1):
        await clock.wait_for_sleepers(2)
    assert clock.sleepers == 2 and clock.next_deadline == T0 + timedelta(seconds=10)
    clock.advance(timedelta(seconds=9))
    await settle()
    assert woke == []
    clock.advance(timedelta(seconds=1))  # exactly at the deadline
    await settle()
    assert woke == [T0 + timedelta(seconds=10)] and clock.sleepers == 1
    clock.set(T0 + timedelta(hours=1))
    await settle()
    assert len(woke) == 2 and clock.sleepers == 0
    await asyncio.gather(*tasks)


async def test_sleep_until_a_past_deadline_returns_at_once() -> None:
    clock = FakeClock(T0)
    async with asyncio.timeout(1):
        await clock.sleep_until(T0)
        await clock.sleep_until(T0 - timedelta(days=1))
    assert clock.sleepers == 0


async def test_stepping_back_wakes_nobody_and_cancel_cleans_up() -> None:
    clock = FakeClock(T0)
    task = asyncio.create_task(clock.sleep_until(T0 + timedelta(seconds=1)))
    await clock.wait_for_sleepers(1)
    clock.set(T0 - timedelta(hours=1))
    await settle()
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0 and clock.next_deadline is None


def test_fake_clock_refuses_naive_times_and_going_backwards_by_advance() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        FakeClock(datetime(2026, 1, 1))
    clock = FakeClock()
    assert clock.now().tzinfo is not None
    with pytest.raises(ValueError, match="timezone-aware"):
        clock.set(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="forwards"):
        clock.advance(timedelta(seconds=-1))


async def test_memory_receive_stream() -> None:
    stream = MemoryReceiveStream([b"ab", b"", b"cd"])
    assert stream.pending == 2
    assert await stream.receive() == b"ab"
    assert await stream.receive() == b"cd"
    waiting = asyncio.create_task(stream.receive())
    await settle()
    assert not waiting.done()  # no data and not closed: receive blocks
    stream.feed(b"ef")
    assert await within(1, waiting) == b"ef"
    stream.feed(b"gh")
    stream.close()
    assert await stream.receive() == b"gh"
    assert await stream.receive() == b"" and await stream.receive() == b""
    with pytest.raises(RuntimeError):
        stream.feed(b"late")


async def test_close_wakes_a_blocked_receiver() -> None:
    stream = MemoryReceiveStream()
    waiting = asyncio.create_task(stream.receive())
    await settle()
    stream.close()
    assert await within(1, waiting) == b""


async def test_memory_send_stream() -> None:
    sink = MemorySendStream()
    await sink.send(b"one")
    await sink.send(b"two")
    assert sink.chunks == [b"one", b"two"] and sink.data == b"onetwo" and not sink.eof
    await sink.send_eof()
    assert sink.eof
    with pytest.raises(RuntimeError):
        await sink.send(b"three")


async def test_pump_between_memory_streams() -> None:
    source = MemoryReceiveStream([b"hello ", b"world"], closed=True)
    sink = MemorySendStream()
    tapped: list[bytes] = []
    assert await pump(source, sink, tapped.append) == 11
    assert sink.data == b"hello world" and sink.eof
    assert tapped == [b"hello ", b"world"]
