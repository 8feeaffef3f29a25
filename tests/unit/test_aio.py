"""broker.aio.within: a bounded wait that never loses its caller's cancellation (the SIEM
forwarder once ran on after ``cancel()`` because ``asyncio.wait_for`` swallowed it)."""

from __future__ import annotations

import asyncio

import pytest

from broker.aio import within


async def test_a_cancel_at_the_moment_the_wait_ends_is_not_lost() -> None:
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    waiter = asyncio.ensure_future(within(10, done))
    await asyncio.sleep(0)  # the waiter is parked on ``done``
    done.set_result(1)
    waiter.cancel()  # in the same turn of the loop
    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_a_lock_handed_over_as_the_waiter_is_cancelled_does_not_keep_it_running() -> None:
    lock = asyncio.Lock()
    await lock.acquire()
    waiter = asyncio.ensure_future(within(10, lock.acquire()))
    await asyncio.sleep(0)
    lock.release()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not lock.locked()  # the cancelled waiter did not walk off holding it


async def test_the_result_comes_back_and_the_deadline_raises_timeout() -> None:
    assert await within(1, asyncio.sleep(0, result="ok")) == "ok"
    with pytest.raises(TimeoutError):
        await within(0.01, asyncio.Event().wait())
