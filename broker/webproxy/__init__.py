"""The device web proxy: technicians reach a device's own web UI through the broker, under
their grant, with the broker logging in for them and every exchange recorded as HAR."""

from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    from broker.webproxy.handlers import setup as setup_routes

    setup_routes(app)
