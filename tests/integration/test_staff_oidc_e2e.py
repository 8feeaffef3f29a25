"""Staff single sign-on end to end: a real OpenID provider (the certified ``oidc-provider``
npm package, ``tests/oidc/provider.mjs`` run by node), the broker's portal on a loopback
port, and real headless Chromium driving the provider's login and consent pages.

The accounts' ``groups`` come from a JSON file the provider re-reads at every login, so the
test takes a group away at the IdP and signs in again."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlmodel import col, select

from broker.aio import within
from broker.config import load_config
from broker.http import create_app
from broker.http.staff import oidc
from broker.services.context import Context
from broker.store.models import AuditEvent, StaffSession, StaffUser
from tests.browser_kit import chromium, screenshot
from tests.ports import free_port
from tests.unit.oidc_kit import CLIENT_ID, CLIENT_SECRET, SECRET_ENV, configure

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "oidc" / "provider.mjs"


def private_jwk(kid: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key)), "kid": kid, "use": "sig",
            "alg": "RS256"}


@dataclass
class RealIdP:
    """The node process running tests/oidc/provider.mjs, restartable on its port."""

    node: str
    port: int
    redirect_uri: str
    accounts: Path
    jwks: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_groups(self, login: str, groups: list[str]) -> None:
        data = json.loads(self.accounts.read_text())
        data[login]["groups"] = groups
        self.accounts.write_text(json.dumps(data))

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            self.node, str(SCRIPT), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "OIDC_ISSUER": self.issuer, "OIDC_PORT": str(self.port),
                 "OIDC_CLIENT_ID": CLIENT_ID, "OIDC_CLIENT_SECRET": CLIENT_SECRET,
                 "OIDC_REDIRECT_URI": self.redirect_uri, "OIDC_ACCOUNTS": str(self.accounts),
                 "OIDC_JWKS": str(self.jwks)})
        assert self.proc.stdout is not None
        line = await within(30, self.proc.stdout.readline())
        assert line.strip() == b"listening", line

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()

    async def rotate(self, kid: str) -> None:
        """A new signing key first, the old one still published; restart the provider."""
        keys = json.loads(self.jwks.read_text())["keys"]
        self.jwks.write_text(json.dumps({"keys": [private_jwk(kid), *keys[:1]]}))
        await self.stop()
        await self.start()


@dataclass
class Portal:
    base: str
    ctx: Context
    idp: RealIdP
    server_app: web.Application


@pytest.fixture
async def portal(broker_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[Portal]:
    node = shutil.which("node")
    if node is None or not (ROOT / "node_modules" / "oidc-provider").is_dir():
        pytest.skip("node or the oidc-provider npm package is missing (run 'make static')")
    idp_port, broker_port = free_port(), free_port()
    base = f"http://127.0.0.1:{broker_port}"
    accounts, jwks = tmp_path / "accounts.json", tmp_path / "jwks.json"
    accounts.write_text(json.dumps({
        "ann": {"email": "ann@hospital.example", "name": "Ann", "groups": ["biomed-admins"]}}))
    jwks.write_text(json.dumps({"keys": [private_jwk("first")]}))
    idp = RealIdP(node, idp_port, f"{base}/staff/oidc/callback", accounts, jwks)
    await idp.start()
    try:
        monkeypatch.setenv(SECRET_ENV, CLIENT_SECRET)
        monkeypatch.setenv("BROKER_BROKER_PUBLIC_URL", base)
        configure(broker_dir, idp.issuer)
        ctx = Context.open(load_config(broker_dir / "broker.toml"))
        server = TestServer(create_app(ctx), host="127.0.0.1", port=broker_port)
        await server.start_server()
        try:
            yield Portal(base, ctx, idp, server.app)
        finally:
            await server.close()
            await ctx.close()
    finally:
        await idp.stop()


async def refusals(ctx: Context) -> list[str]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(
            col(AuditEvent.kind) == "staff.oidc_refused"))).all()
    return [json.loads(r.data)["reason"] for r in rows]


async def sso(page: Any, base: str, *, login: str | None) -> None:
    """From the broker's sign-in page through the provider (its login and consent pages
    when it asks) and back."""
    await page.goto(f"{base}/staff/login?next=/staff/devices")
    await page.click("text=Sign in with Test IdP")
    if login is not None:
        await page.fill("input[name=login]", login)
        await page.fill("input[name=password]", "any-password")
        await page.click("button[type=submit]")
        await page.wait_for_load_state()
        if await page.locator("button:has-text('Continue')").count():
            await page.click("button:has-text('Continue')")
    await page.wait_for_url(lambda url: url.startswith(base), timeout=15000)
    await page.wait_for_load_state()


async def test_sign_in_with_a_real_provider_maps_groups_to_roles_at_every_sign_in(
        portal: Portal) -> None:
    async with chromium() as browser:
        page = await browser.new_page()  # type: ignore[attr-defined]
        await sso(page, portal.base, login="ann")
        await page.wait_for_url(f"{portal.base}/staff/devices", timeout=15000)
        assert "Sign out" in await page.content() or "logout" in await page.content()
        audit = await page.goto(f"{portal.base}/staff/audit")
        assert audit is not None and audit.status == 200
        await screenshot(page, "oidc-admin-signed-in")
        async with portal.ctx.store.session() as db:
            user = (await db.exec(select(StaffUser).where(StaffUser.name == "ann"))).one()
            via = [s.via for s in (await db.exec(select(StaffSession))).all()]
        assert user.role == "admin" and via == ["oidc"]

        # The IdP moves ann to the auditors: the next sign-in gives the auditor role.
        portal.idp.set_groups("ann", ["biomed-auditors"])
        await page.click("button:has-text('Sign out')")
        await page.wait_for_url(f"{portal.base}/staff/login", timeout=15000)
        await sso(page, portal.base, login=None)  # the IdP session signs her in directly
        await page.wait_for_url(f"{portal.base}/staff/devices", timeout=15000)
        async with portal.ctx.store.session() as db:
            user = (await db.exec(select(StaffUser).where(StaffUser.name == "ann"))).one()
        assert user.role == "auditor"
        breakglass = await page.goto(f"{portal.base}/staff/breakglass")
        assert breakglass is not None and breakglass.status in (403, 404)

        # And then out of every broker group: refused with a clear page, and audited.
        portal.idp.set_groups("ann", ["cafeteria"])
        await page.goto(f"{portal.base}/staff/devices")
        await page.click("button:has-text('Sign out')")
        await sso(page, portal.base, login=None)
        assert "none of your groups" in await page.content()
        await screenshot(page, "oidc-no-mapped-group")
        home = await page.goto(f"{portal.base}/staff/")
        assert home is not None and "/staff/login" in page.url
        assert await refusals(portal.ctx) == ["no mapped group"]


async def test_a_rotated_provider_key_is_fetched_and_a_replayed_callback_refused(
        portal: Portal) -> None:
    async with chromium() as browser:
        page = await browser.new_page()  # type: ignore[attr-defined]
        callbacks: list[str] = []
        page.on("request", lambda request: callbacks.append(request.url)
                if "/staff/oidc/callback" in request.url else None)
        await sso(page, portal.base, login="ann")
        await page.wait_for_url(f"{portal.base}/staff/devices", timeout=15000)
        found = oidc.provider(portal.server_app)
        assert found is not None and found.jwks_fetches == 1
        # The same callback URL again (a replay, e.g. from the history): refused.
        await page.goto(callbacks[-1])
        assert "could not be completed" in await page.content()
        assert await refusals(portal.ctx) == ["state unknown or already used"]

        # The IdP rotates its signing key (the new one first, the old one still published).
        await portal.idp.rotate("second")
        await page.goto(f"{portal.base}/staff/devices")
        await page.click("button:has-text('Sign out')")
        await sso(page, portal.base, login="ann")
        await page.wait_for_url(f"{portal.base}/staff/devices", timeout=15000)
        assert found.jwks_fetches == 2 and "second" in found._keys
