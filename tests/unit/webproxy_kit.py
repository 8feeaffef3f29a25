"""Shared set-up for the web proxy tests: upstream aiohttp servers that remember every request
they see, a technician with a grant on a device whose web UI is one of them, and signing in
through the real portal (sign-in page, CSRF, cookie)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import asyncssh
from aiohttp import web
from aiohttp.test_utils import TestClient

from broker.services.context import Context
from broker.services.device_web import WebOptions, configure
from broker.services.directory import Directory
from broker.services.web_signin import create_signin
from broker.store.models import Device, Grant

PASSWORD = "s3cret-device-pw"


@dataclass
class Upstream:
    """A running aiohttp server and every request target it received."""

    runner: web.AppRunner
    port: int
    seen: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


@asynccontextmanager
async def upstream(build: Callable[[list[str]], web.Application], *, ssl: object = None
                   ) -> AsyncIterator[Upstream]:
    seen: list[str] = []
    runner = web.AppRunner(build(seen), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl)  # type: ignore[arg-type]
    await site.start()
    try:
        yield Upstream(runner, runner.addresses[0][1], seen)
    finally:
        await runner.cleanup()


def recording_app(seen: list[str]) -> web.Application:
    """An app whose middleware notes ``METHOD raw-target Host`` for every request."""

    @web.middleware
    async def remember(request: web.Request, handler):  # type: ignore[no-untyped-def]
        seen.append(f"{request.method} {request.raw_path} {request.host}")
        return await handler(request)

    return web.Application(middlewares=[remember], client_max_size=64 * 1024 * 1024)


async def add_grant(ctx: Context, web_url: str, *, device: str = "dev", tech: str = "tech",
                    protocols: tuple[str, ...] = ("ssh", "web"), auth: str = "none",
                    form_path: str | None = None, insecure_http: bool = True,
                    hours: float = 1, **web: object) -> int:
    """A technician (created once), a device with ``web_url``, and an active grant."""
    directory = Directory(ctx, "test")
    if not any(t.technician.name == tech for t in await directory.technicians()):
        key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
        await directory.add_technician(tech, "Acme Medical",
                                       [asyncssh.import_public_key(key)])
    added = await directory.add_device(
        Device(name=device, host="127.0.0.1", port=22, login_user="service", web_url=web_url),
        "password", PASSWORD.encode())
    await configure(ctx, "test", device, WebOptions(insecure_http=insecure_http, auth=auth,
                                                     form_path=form_path, **web))  # type: ignore[arg-type]
    tech_row = (await directory.technician(tech)).technician
    now = ctx.now()
    async with ctx.store.session() as db:
        grant = Grant(technician_id=tech_row.id or 0, device_id=added.id or 0,
                      protocols=list(protocols), start=now - timedelta(minutes=1),
                      end=now + timedelta(hours=hours), state="active", created_at=now)
        db.add(grant)
        await db.flush()
        return grant.id or 0


async def sign_in(client: TestClient, ctx: Context, *, tech: str = "tech",
                  device: str = "dev") -> str:
    """Follow a fresh sign-in link as a browser would; returns the cookie header value."""
    token, _ = await create_signin(ctx, tech, device, "test")
    page = await client.get(f"/w/signin/{token}")
    assert page.status == 200, await page.text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())
    assert csrf
    pre = page.cookies["broker_web_signin"]  # Secure: the test client would not send it
    assert pre["httponly"] and pre["samesite"] == "Strict" and pre["path"] == "/w/signin/"
    answer = await client.post(f"/w/signin/{token}", data={"csrf": csrf.group(1)},
                               headers={"Cookie": f"broker_web_signin={pre.value}"},
                               allow_redirects=False)
    assert answer.status == 303, await answer.text()
    cookie = answer.cookies["broker_web"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["secure"]
    assert cookie["path"] == answer.headers["Location"]
    return f"broker_web={cookie.value}"
