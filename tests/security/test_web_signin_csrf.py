"""Login CSRF on the device sign-in: another site cannot make a browser redeem a sign-in
link (its own, say) and so plant a technician's cookie. The POST must come from the sign-in
page of this origin, carrying a CSRF token bound to the pre-session cookie that page set."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web
from sqlmodel import select

from broker.services.web_signin import create_signin
from broker.store.models import AuditEvent
from tests.unit.webproxy_kit import add_grant, upstream
from tests.web_kit import device_origin


async def home(_: web.Request) -> web.Response:
    return web.Response(text="device home")


def device(_: list[str]) -> web.Application:
    app = web.Application()
    app.router.add_get("/", home)
    return app


async def _refusals(ctx) -> list[str]:  # type: ignore[no-untyped-def]
    async with ctx.store.session() as db:
        return [row.kind for row in (await db.exec(select(AuditEvent))).all()
                if row.kind.startswith("web.signin_") and "refused" in row.kind]


async def test_cross_site_signin_posts_plant_no_cookie(broker_dir: Path) -> None:
    async with upstream(device) as web_ui, device_origin(broker_dir) as (client, ctx):
        await add_grant(ctx, web_ui.url, tech="mallory")
        token, _ = await create_signin(ctx, "mallory", "dev", "test")
        # the attacker opens their own link, and learns its form token and pre-session cookie
        page = await client.get(f"/w/signin/{token}")
        csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())
        assert csrf
        nonce = page.cookies["broker_web_signin"].value
        form = {"csrf": csrf.group(1)}
        attempts = [
            # a cross-site auto-submitting form, with everything the attacker knows
            {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site",
             "Cookie": f"broker_web_signin={nonce}"},
            # the same site, another origin (the portal, another grant's host)
            {"Sec-Fetch-Site": "same-site", "Cookie": f"broker_web_signin={nonce}"},
            {"Origin": "null", "Cookie": f"broker_web_signin={nonce}"},
            # an old browser without those headers: the victim's browser lacks the
            # attacker's pre-session cookie, or holds its own
            {},
            {"Cookie": "broker_web_signin=" + "v" * 32},
        ]
        for headers in attempts:
            answer = await client.post(f"/w/signin/{token}", data=form, headers=headers,
                                       allow_redirects=False)
            assert answer.status == 403, (headers, answer.status)
            assert "broker_web" not in answer.cookies, headers
        assert len(await _refusals(ctx)) == len(attempts)
        # the link itself was not used up: the real page's own POST still works
        good = await client.post(f"/w/signin/{token}", data=form, allow_redirects=False,
                                 headers={"Cookie": f"broker_web_signin={nonce}",
                                          "Origin": f"http://127.0.0.1:{client.server.port}",
                                          "Sec-Fetch-Site": "same-origin"})
        assert good.status == 303 and "broker_web" in good.cookies
