"""Driving the portal in-process: an aiohttp test client on a real app over a real
``broker init`` directory (real SQLite, real keys), for the web and API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from broker.clock import Clock
from broker.config import load_config
from broker.http import create_app
from broker.revocation.registry import LiveSessions
from broker.services.context import Context


@asynccontextmanager
async def portal(broker_dir: Path, *, clock: Clock | None = None,
                 sessions: LiveSessions | None = None,
                 extend: Callable[[web.Application], None] | None = None,
                 ) -> AsyncIterator[tuple[TestClient[web.Request, web.Application], Context]]:
    """``async with portal(broker_dir) as (client, ctx):`` the app served on a loopback port."""
    ctx = Context.open(load_config(broker_dir / "broker.toml"), clock=clock)
    app = create_app(ctx, sessions)
    if extend is not None:
        extend(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client, ctx
    finally:
        await client.close()
        await ctx.close()
