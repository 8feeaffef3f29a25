"""Both web listeners of ``broker serve`` in-process (the portal and the device origin, real
TLS on loopback ports), reached by Chromium under test host names: ``broker.test`` for the
portal, the same host on another port (or ``<grant>.devices.test``) for device pages."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from broker.config import load_config
from broker.http import WebSite, create_app, create_device_app
from broker.http.site import Listener
from broker.revocation.registry import LiveSessions
from broker.services.context import Context
from tests.integration.harness import free_port

RESOLVE = "--host-resolver-rules=MAP *.test 127.0.0.1"


@dataclass
class Broker:
    ctx: Context
    portal_port: int
    devices_port: int

    @property
    def portal(self) -> str:
        return f"https://broker.test:{self.portal_port}"


def configure(broker_dir: Path, *, grant_host: bool = False, head: str = "10s",
              handshake: str = "10s") -> tuple[int, int]:
    portal_port, devices_port = free_port(), free_port()
    config = broker_dir / "broker.toml"
    text = config.read_text()
    text = text.replace('public_url = "https://localhost:8443"',
                        f'public_url = "https://broker.test:{portal_port}"')
    text = text.replace('listen = "0.0.0.0:8443"', f'listen = "127.0.0.1:{portal_port}"')
    text = text.replace('listen = "0.0.0.0:8444"', f'listen = "127.0.0.1:{devices_port}"')
    text = text.replace('head_timeout = "10s"', f'head_timeout = "{head}"')
    text = text.replace('handshake_timeout = "10s"', f'handshake_timeout = "{handshake}"')
    if grant_host:
        text = text.replace('public_url = ""', f'public_url = "https://devices.test:{devices_port}"')
        text = text.replace('grant_host = ""', 'grant_host = "{grant}.devices.test"')
    config.write_text(text)
    return portal_port, devices_port


@asynccontextmanager
async def both_listeners(broker_dir: Path, **options: object) -> AsyncIterator[Broker]:
    configure(broker_dir, **options)  # type: ignore[arg-type]
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    sessions = LiveSessions()
    portal = WebSite(create_app(ctx, sessions), ctx.config)
    devices = WebSite(create_device_app(ctx, sessions), ctx.config,
                      Listener.devices(ctx.config))
    await portal.start()
    await devices.start()
    try:
        yield Broker(ctx, portal.port, devices.port)
    finally:
        await devices.close()
        await portal.close()
        await ctx.close()


@dataclass
class Device:
    """A device web UI under the attacker's control: ``/`` is a page running ``script``
    (with ``data`` as JSON in ``window.DATA``); every request's path and headers are kept."""

    script: str
    data: dict[str, object] = field(default_factory=dict)
    seen: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def app(self, _: list[str]) -> web.Application:
        async def anything(request: web.Request) -> web.Response:
            self.seen.append((request.path_qs, dict(request.headers)))
            if request.path != "/":
                return web.Response(text=f"device page {request.path}")
            page = (f"<!doctype html><title>device</title><body><pre id=out></pre><script>"
                    f"window.DATA = {json.dumps(self.data)};\n{self.script}</script>")
            return web.Response(text=page, content_type="text/html")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", anything)
        return app
