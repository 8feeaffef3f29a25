"""Driving the portal in-process: an aiohttp test client on a real app over a real
``broker init`` directory (real SQLite, real keys), for the web and API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from broker.clock import Clock
from broker.config import load_config
from broker.http import create_app, create_device_app
from broker.revocation.registry import LiveSessions
from broker.services.context import Context


@asynccontextmanager
async def portal(broker_dir: Path, *, clock: Clock | None = None,
                 sessions: LiveSessions | None = None,
                 extend: Callable[[web.Application], None] | None = None,
                 factory: Callable[[Context, LiveSessions | None], web.Application] = create_app,
                 ) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Context]]:
    """``async with portal(broker_dir) as (client, ctx):`` the app served on a loopback port
    (``factory=create_device_app``: the device origin's app instead)."""
    ctx = Context.open(load_config(broker_dir / "broker.toml"), clock=clock)
    app = factory(ctx, sessions)
    if extend is not None:
        extend(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, ctx
    finally:
        await client.close()
        await ctx.close()


def device_origin(broker_dir: Path, **options: object
                  ) -> AbstractAsyncContextManager[tuple[TestClient[web.Request, web.Application],
                                                         Context]]:
    """Like :func:`portal`, for the device origin's app (the web proxy and its sign-in)."""
    return portal(broker_dir, factory=create_device_app, **options)  # type: ignore[arg-type]
