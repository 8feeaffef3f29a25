"""The device gets only headers the broker builds or passes on as end-to-end content: never
the client's Host, X-Forwarded-*, Forwarded, Via, X-Real-IP and kin, hop-by-hop headers (nor
those the client's Connection header names), cookies or credentials."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from broker.webproxy.origin import device_base_url
from tests.unit.webproxy_kit import add_grant, sign_in, upstream
from tests.web_kit import device_origin


def echo(_: list[str]) -> web.Application:
    async def headers(request: web.Request) -> web.Response:
        return web.json_response([[k, v] for k, v in request.headers.items()])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", headers)
    return app


SPOOFED = {
    "X-Forwarded-Host": "evil.example", "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "http", "X-Forwarded-Port": "1", "X-Forwarded-Prefix": "/admin",
    "X-Forwarded-Server": "evil", "Forwarded": "for=6.6.6.6;host=evil.example",
    "X-Real-IP": "6.6.6.6", "X-Client-IP": "6.6.6.6", "True-Client-IP": "6.6.6.6",
    "Via": "1.1 evil", "X-Original-URL": "/admin", "X-Rewrite-URL": "/admin",
    "X-Original-Host": "evil.example", "X-Host": "evil.example",
    "X-HTTP-Method-Override": "DELETE", "Proxy-Authorization": "Basic eDp4",
    "Authorization": "Bearer stolen", "X-Hop": "named-by-connection",
    "Connection": "X-Hop", "Keep-Alive": "timeout=5", "TE": "trailers",
    "X-Broker-Node": "evil",
}


async def test_spoofed_proxy_headers_never_reach_the_device(broker_dir: Path) -> None:
    async with upstream(echo) as device, device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, device.url)
        cookie = await sign_in(client, ctx)
        answer = await client.get(
            f"/w/{grant}/x", headers={**SPOOFED, "Host": "evil.example",
                                      "Cookie": cookie + "; __Host-broker_session=staff",
                                      "X-Device-Token": "kept", "Accept-Language": "de"})
        assert answer.status == 200, await answer.text()
        seen = {k.lower(): v for k, v in await answer.json()}
        public = urlsplit(device_base_url(ctx.config.settings))
    for name in SPOOFED:
        if not name.lower().startswith("x-forwarded-"):
            assert name.lower() not in seen, (name, seen)
    assert "cookie" not in seen and "authorization" not in seen
    assert seen["host"] == f"127.0.0.1:{device.port}"
    # built by the broker from its settings (the device origin), never from the request
    assert seen["x-forwarded-host"] == public.netloc and public.port == 8444
    assert seen["x-forwarded-proto"] == public.scheme == "https"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-prefix"] == f"/w/{grant}"
    assert not any(k.startswith("x-forwarded-") for k in seen
                   if k not in ("x-forwarded-host", "x-forwarded-proto", "x-forwarded-for",
                                "x-forwarded-prefix"))
    assert seen["x-device-token"] == "kept" and seen["accept-language"] == "de"
