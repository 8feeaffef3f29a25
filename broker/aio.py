"""Waiting with a deadline without losing a cancellation.

On Python 3.11, ``asyncio.wait_for`` can swallow the caller's cancellation when the thing it
waits on finishes at the same moment (CPython gh-86296, fixed in 3.12): the task that was told
to stop carries on, and whoever awaits it waits forever. ``asyncio.timeout`` has no such race,
so every bounded wait in the broker goes through :func:`within` (ruff bans ``wait_for``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

_T = TypeVar("_T")


async def within(seconds: float, awaitable: Awaitable[_T]) -> _T:
    """``await awaitable``, raising :class:`TimeoutError` after ``seconds``."""
    async with asyncio.timeout(seconds):
        return await awaitable
