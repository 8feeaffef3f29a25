"""Staff sign-in: password then TOTP, generic failures each audited with the real reason,
single-use codes, rate limits, cookie flags, idle and absolute expiry, logout, CSRF."""

from __future__ import annotations

import json
import ssl
from datetime import timedelta
from http.cookies import SimpleCookie
from pathlib import Path

from aiohttp import TCPConnector, web
from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import col, select

from broker.config import load_config
from broker.http import create_app
from broker.http.ratelimit import RateLimit
from broker.http.staff.auth import GENERIC_FAILURE, LOGIN_LIMIT
from broker.services.context import Context
from broker.services.staff_accounts import StaffAccounts
from broker.store.models import AuditEvent, StaffSession
from broker.testing import FakeClock
from tests.unit.staff_kit import (
    PASSWORD,
    add_staff,
    code_at,
    csrf_of,
    post_code,
    post_login,
    sign_in,
)
from tests.web_kit import portal


async def staff_events(ctx: Context) -> list[tuple[str, dict[str, object]]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(col(AuditEvent.kind).startswith("staff."))
                              .order_by(col(AuditEvent.seq)))).all()
    return [(row.kind, {"subject": row.subject, **json.loads(row.data)}) for row in rows]


async def test_password_then_totp_signs_in_and_every_attempt_is_audited(
        broker_dir: Path) -> None:
    clock = FakeClock()
    async with portal(broker_dir, clock=clock) as (client, ctx):
        secret = await add_staff(ctx, "ann", "auditor", totp=True)
        assert secret is not None
        wrong = await post_login(client, "ann", "not-the-password!")
        assert wrong.status == 401 and GENERIC_FAILURE in await wrong.text()
        step1 = await post_login(client, "ann", PASSWORD)
        assert step1.status == 303 and step1.headers["Location"].startswith("/staff/login/totp")
        # Half signed in (password only) is not signed in.
        early = await client.get("/staff/", allow_redirects=False)
        assert early.status == 303 and early.headers["Location"].startswith("/staff/login")
        bad_code = await post_code(client, "000000" if code_at(ctx, secret) != "000000"
                                   else "111111")
        assert bad_code.status == 401 and GENERIC_FAILURE in await bad_code.text()
        good = await post_code(client, code_at(ctx, secret))
        assert good.status == 303 and good.headers["Location"] == "/staff/"
        home = await client.get("/staff/")
        assert home.status == 200 and "ann" in await home.text()
        # The same code again, in a new sign-in: refused (single use).
        client.session.cookie_jar.clear()
        assert (await post_login(client, "ann", PASSWORD)).status == 303
        replay = await post_code(client, code_at(ctx, secret))
        assert replay.status == 401
        clock.advance(timedelta(seconds=30))
        assert (await post_code(client, code_at(ctx, secret))).status == 303
        events = await staff_events(ctx)
    kinds = [(kind, data.get("reason"), data.get("step")) for kind, data in events
             if kind.startswith("staff.login")]
    assert kinds == [
        ("staff.login_failed", "wrong password", "password"),
        ("staff.login_failed", "wrong code", "totp"),
        ("staff.login_succeeded", None, None),
        ("staff.login_failed", "code already used", "totp"),
        ("staff.login_succeeded", None, None),
    ]
    assert all(data["subject"] == "staff:ann" and data["address"] for _, data in events
               if _.startswith("staff.login"))


async def test_unknown_disabled_and_wrong_all_look_the_same(broker_dir: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        await add_staff(ctx, "dan", "admin")
        await StaffAccounts(ctx, "test").disable("dan")
        await add_staff(ctx, "eve", "auditor")
        answers = [await post_login(client, name, password) for name, password in
                   (("nobody", PASSWORD), ("dan", PASSWORD), ("eve", "wrong-password-1"),
                    ("", ""), ("eve", "x" * 5000))]
        bodies = {(r.status, GENERIC_FAILURE in await r.text()) for r in answers}
        assert bodies == {(401, True)}
        reasons = [data["reason"] for kind, data in await staff_events(ctx)
                   if kind == "staff.login_failed"]
    assert reasons == ["unknown user", "account disabled", "wrong password",
                       "name or password empty", "input too long"]


def _frozen_limit(app: web.Application) -> None:
    app[LOGIN_LIMIT] = RateLimit(per_minute=10, burst=10, clock=lambda: 0.0)


async def test_login_is_rate_limited_per_address(broker_dir: Path) -> None:
    async with portal(broker_dir, extend=_frozen_limit) as (client, ctx):
        await add_staff(ctx, "fay", "auditor")
        statuses = [(await post_login(client, "fay", f"guess-number-{n}")).status
                    for n in range(10)]
        assert statuses == [401] * 10
        limited = await post_login(client, "fay", PASSWORD)  # even the right password waits
        assert limited.status == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert "too many attempts" in await limited.text()


def _set_cookie(response: object, name: str) -> str:
    headers = response.headers.getall("Set-Cookie")  # type: ignore[attr-defined]
    found = [h for h in headers if h.startswith(f"{name}=")]
    assert found, headers
    return str(found[0])


async def test_session_cookie_over_plain_http_is_httponly_strict(broker_dir: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        await add_staff(ctx, "gus", "auditor")
        response = await post_login(client, "gus", PASSWORD)
        header = _set_cookie(response, "broker_session")
        attributes = [part.strip().lower() for part in header.split(";")]
        assert "httponly" in attributes and "samesite=strict" in attributes
        assert "path=/" in attributes and "secure" not in attributes
        token = SimpleCookie(header)["broker_session"].value
        async with ctx.store.session() as db:
            stored = (await db.exec(select(StaffSession.token_hash))).all()
        assert token not in stored and len(stored) == 1  # only its hash is kept


async def test_session_cookie_over_tls_is_secure_with_host_prefix(broker_dir: Path) -> None:
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(broker_dir / "data" / "tls.crt", broker_dir / "data" / "tls.key")
    server = TestServer(create_app(ctx))
    await server.start_server(ssl=tls)
    client = TestClient(server, connector=TCPConnector(ssl=False))
    try:
        await add_staff(ctx, "hal", "auditor")
        response = await post_login(client, "hal", PASSWORD)
        assert response.status == 303
        header = _set_cookie(response, "__Host-broker_session")
        attributes = [part.strip().lower() for part in header.split(";")]
        assert {"secure", "httponly", "samesite=strict", "path=/"} <= set(attributes)
        assert not any(a.startswith("domain=") for a in attributes)
        home = await client.get("/staff/")
        assert home.status == 200
        assert home.headers["Strict-Transport-Security"].startswith("max-age=")
    finally:
        await client.close()
        await ctx.close()


async def test_sessions_end_when_idle_and_at_their_absolute_limit(broker_dir: Path) -> None:
    clock = FakeClock()
    async with portal(broker_dir, clock=clock) as (client, ctx):
        await add_staff(ctx, "ida", "auditor")
        await sign_in(client, ctx, "ida")
        clock.advance(timedelta(minutes=29))
        assert (await client.get("/staff/", allow_redirects=False)).status == 200
        clock.advance(timedelta(minutes=31))  # 31 idle minutes after the last request
        idle = await client.get("/staff/", allow_redirects=False)
        assert idle.status == 303 and idle.headers["Location"] == "/staff/login?next=/staff/"
        client.session.cookie_jar.clear()
        await sign_in(client, ctx, "ida")
        for _ in range(12 * 4):  # busy all day, a request every 15 minutes
            clock.advance(timedelta(minutes=15))
            response = await client.get("/staff/", allow_redirects=False)
            if response.status != 200:
                break
        assert response.status == 303
        assert clock.now() - FakeClock().now() >= timedelta(hours=12)
        client.session.cookie_jar.clear()  # a browser that never comes back ...
        await sign_in(client, ctx, "ida")
        clock.advance(timedelta(hours=13))
        client.session.cookie_jar.clear()
        await sign_in(client, ctx, "ida")  # ... leaves no row behind after its expiry
        async with ctx.store.session() as db:
            assert len((await db.exec(select(StaffSession))).all()) == 1


async def test_logout_ends_the_server_side_session(broker_dir: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        await add_staff(ctx, "jo", "auditor")
        csrf = await sign_in(client, ctx, "jo")
        cookie = next(c for c in client.session.cookie_jar if c.key == "broker_session").value
        refused = await client.post("/staff/logout", data={"csrf": "nope"},
                                    allow_redirects=False)
        assert refused.status == 403
        out = await client.post("/staff/logout", data={"csrf": csrf}, allow_redirects=False)
        assert out.status == 303 and out.headers["Location"] == "/staff/login"
        client.session.cookie_jar.clear()
        again = await client.get("/staff/", allow_redirects=False,
                                 cookies={"broker_session": cookie})
        assert again.status == 303  # the old cookie is worth nothing now
        assert ("staff.logout", {"subject": "staff:jo", "address": "127.0.0.1"}) in \
            await staff_events(ctx)


async def test_disabling_an_account_ends_its_sessions(broker_dir: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        await add_staff(ctx, "kim", "admin")
        await sign_in(client, ctx, "kim")
        await StaffAccounts(ctx, "test").disable("kim")
        response = await client.get("/staff/", allow_redirects=False)
        assert response.status == 303


async def test_login_form_needs_its_csrf_token_and_next_stays_on_site(broker_dir: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        await add_staff(ctx, "lee", "auditor")
        await client.get("/staff/login")
        forged = await client.post("/staff/login", allow_redirects=False,
                                   data={"name": "lee", "password": PASSWORD})
        assert forged.status == 403
        page = await client.get("/staff/login?next=//evil.example/x")
        assert "//evil.example" not in await page.text()
        response = await client.post("/staff/login", allow_redirects=False, data={
            "csrf": csrf_of(await page.text()), "name": "lee", "password": PASSWORD,
            "next": "https://evil.example/"})
        assert response.status == 303 and response.headers["Location"] == "/staff/"
        deep = await client.get("/staff/login?next=/staff/devices", allow_redirects=False)
        assert deep.status == 303 and deep.headers["Location"] == "/staff/devices"
