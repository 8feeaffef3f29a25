"""The portal's frame: health, security headers, error mapping (JSON under /api, a page
elsewhere), body limits, and that a crash answers a bare 500 without leaking anything."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from broker.config import load_config
from broker.errors import ConfigError, Conflict, NotFound
from broker.http import create_app
from broker.http.errors import BadInput
from broker.http.security import CSP, csrf_ok, csrf_token, subkey
from broker.http.site import tls_context
from broker.services.context import Context
from tests.web_kit import portal


def _routes(app: web.Application) -> None:
    async def boom(_request: web.Request) -> web.Response:
        raise RuntimeError("secret-internal-detail")

    async def missing(_request: web.Request) -> web.Response:
        raise NotFound("no grant 42")

    async def clash(_request: web.Request) -> web.Response:
        raise Conflict("request 7 is already approved")

    async def bad(_request: web.Request) -> web.Response:
        raise BadInput("reason", "reason: is required", status=422)

    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    for prefix in ("", "/api/v1"):
        app.router.add_get(f"{prefix}/boom", boom)
        app.router.add_get(f"{prefix}/missing", missing)
        app.router.add_get(f"{prefix}/clash", clash)
        app.router.add_post(f"{prefix}/bad", bad)
        app.router.add_post(f"{prefix}/echo", echo)


async def test_health_and_security_headers(broker_dir: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        response = await client.get("/healthz")
        assert response.status == 200
        assert (await response.json()) == {"ok": True, "node": ctx.node}
        assert response.headers["Content-Security-Policy"] == CSP
        assert "frame-ancestors 'none'" in CSP and "unsafe-inline" not in CSP
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"


async def test_errors_are_json_under_api_and_pages_elsewhere(broker_dir: Path) -> None:
    async with portal(broker_dir, extend=_routes) as (client, _ctx):
        api = await client.get("/api/v1/missing")
        assert api.status == 404
        assert await api.json() == {"error": "no grant 42", "status": 404}
        page = await client.get("/missing")
        assert page.status == 404 and page.content_type == "text/html"
        assert "no grant 42" in await page.text()
        assert page.headers["Content-Security-Policy"] == CSP
        clash = await client.get("/api/v1/clash")
        assert clash.status == 409
        bad = await client.post("/api/v1/bad")
        assert bad.status == 422
        assert await bad.json() == {"error": "reason: is required", "status": 422,
                                    "field": "reason"}
        unknown = await client.get("/api/v1/nowhere")
        assert unknown.status == 404 and (await unknown.json())["status"] == 404
        method = await client.delete("/api/v1/missing")
        assert method.status == 405 and "GET" in method.headers["Allow"]


async def test_a_crash_is_a_bare_500(broker_dir: Path) -> None:
    async with portal(broker_dir, extend=_routes) as (client, _ctx):
        for path in ("/api/v1/boom", "/boom"):
            response = await client.get(path)
            assert response.status == 500
            body = await response.text()
            assert "secret-internal-detail" not in body and "Traceback" not in body


async def test_oversized_bodies_get_413(broker_dir: Path) -> None:
    async with portal(broker_dir, extend=_routes) as (client, ctx):
        limit = ctx.config.settings.http.max_body
        ok = await client.post("/api/v1/echo", data=b"x" * 1000)
        assert ok.status == 200 and await ok.read() == b"x" * 1000
        big = await client.post("/api/v1/echo", data=b"x" * (limit + 1))
        assert big.status == 413
        assert (await big.json())["status"] == 413


async def test_csrf_tokens_are_bound_and_keys_are_separate(broker_dir: Path) -> None:
    async with portal(broker_dir) as (client, _ctx):
        app = client.app
        assert app is not None
        token = csrf_token(app, "session-a")
        assert csrf_ok(app, "session-a", token)
        assert not csrf_ok(app, "session-b", token)
        assert not csrf_ok(app, "session-a", token[:-1] + ("0" if token[-1] != "0" else "1"))
        assert not csrf_ok(app, "session-a", None)
        assert subkey(b"k" * 32, "csrf") != subkey(b"k" * 32, "cookie")


def test_rate_limit_refills_over_time() -> None:
    from broker.http.ratelimit import RateLimit

    now = [0.0]
    limit = RateLimit(per_minute=6, burst=2, clock=lambda: now[0])
    assert limit.check("a") == 0 and limit.check("a") == 0
    assert limit.check("a") == 10.0  # 6/min: one token every 10 s
    assert limit.check("b") == 0  # another client has its own bucket
    now[0] = 10.0
    assert limit.check("a") == 0
    assert limit.check("a") > 0


async def test_rate_limit_answers_429_with_retry_after(broker_dir: Path) -> None:
    from broker.http.ratelimit import RateLimit

    limit = RateLimit(per_minute=1, burst=1)

    def routes(app: web.Application) -> None:
        async def guarded(request: web.Request) -> web.Response:
            limit.enforce(request)
            return web.Response(text="ok")
        app.router.add_get("/api/v1/guarded", guarded)

    async with portal(broker_dir, extend=routes) as (client, _ctx):
        assert (await client.get("/api/v1/guarded")).status == 200
        refused = await client.get("/api/v1/guarded")
        assert refused.status == 429 and int(refused.headers["Retry-After"]) >= 59


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "the web secret key is missing (run 'broker init')"),
    (b"short", "the web secret key is shorter than 32 bytes"),
])
def test_a_missing_or_short_web_key_is_one_line(broker_dir: Path, content: bytes | None,
                                                 fragment: str) -> None:
    key = broker_dir / "data" / "web.key"
    if content is None:
        key.unlink()
    else:
        key.write_bytes(content)
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    with pytest.raises(ConfigError) as caught:
        create_app(ctx)
    assert str(caught.value) == f"{key}: {fragment}"


def test_plain_http_when_both_tls_files_are_unset(broker_dir: Path) -> None:
    config = load_config(broker_dir / "broker.toml", environ={
        "BROKER_HTTP_TLS_CERT": "", "BROKER_HTTP_TLS_KEY": ""})
    assert tls_context(config) is None
    assert tls_context(load_config(broker_dir / "broker.toml", environ={})) is not None
