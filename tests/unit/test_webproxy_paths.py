"""Path tricks against the proxy: raw HTTP requests (so no client library normalises them)
to a portal whose grant's device and a second, "other" device both record every request they
see. Nothing may reach the other device, and the grant's device only sees clean paths."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from broker.webproxy.paths import (
    DeviceOrigin,
    PathRefused,
    check_path,
    rewrite_html,
    rewrite_location,
)
from tests.unit.webproxy_kit import add_grant, recording_app, sign_in, upstream
from tests.web_kit import device_origin


def anything(seen: list[str]) -> web.Application:
    app = recording_app(seen)

    async def any_path(request: web.Request) -> web.Response:
        return web.Response(text=f"device saw {request.raw_path}")

    app.router.add_route("*", "/{tail:.*}", any_path)
    return app


async def raw(port: int, request_line: str, headers: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{request_line}\r\n{headers}Connection: close\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode("utf-8", "replace").partition("\r\n\r\n")
    return int(head.split()[1]), body


TRICKS = [
    "/w/{g}/../{o}/secret",
    "/w/{g}/a/../../w/{o}/x",
    "/w/{g}/%2e%2e/%2e%2e/etc/passwd",
    "/w/{g}/%2E%2E%2Fetc%2Fpasswd",
    "/w/{g}/a%2Fb",
    "/w/{g}/a%5cb",
    "/w/{g}/a\\..\\b",
    "/w/{g}/%252e%252e/x",
    "/w/{g}/%25252e%25252e/x",
    "/w/{g}/./x",
    "/w/{g}//127.0.0.1:{op}/x",
    "/w/{g}/a%00b",
    "http://127.0.0.1:{op}/w/{g}/x",
    "http://127.0.0.1:{op}/x",
    "//127.0.0.1:{op}/w/{g}/x",
    "/w/{o}/x",
]


async def test_path_tricks_never_reach_anything_outside_the_grants_device(
        broker_dir: Path) -> None:
    async with upstream(anything) as device, upstream(anything) as other, \
            device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, device.url)
        other_grant = await add_grant(ctx, other.url, device="other", tech="someone")
        cookie = await sign_in(client, ctx)
        port = client.server.port
        assert port is not None
        headers = f"Host: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
        for trick in TRICKS:
            target = trick.format(g=grant, o=other_grant, op=other.port)
            status, body = await raw(port, f"GET {target} HTTP/1.1", headers)
            assert status in (400, 403, 404), (target, status, body)
        # Host header spoofing changes nothing: the device is reached by its own name
        spoofed = f"Host: 127.0.0.1:{other.port}\r\nX-Forwarded-Host: evil\r\nCookie: {cookie}\r\n"
        status, body = await raw(port, f"GET /w/{grant}/fine HTTP/1.1", spoofed)
        assert status == 200 and body.endswith("device saw /fine")
        status, _ = await raw(port, f"GET /w/{grant}/ok%20space?q=%2F HTTP/1.1", headers)
        assert status == 200
    assert other.seen == []
    assert device.seen == [f"GET /fine 127.0.0.1:{device.port}",
                           f"GET /ok%20space?q=%2F 127.0.0.1:{device.port}"]


async def test_refused_paths_are_audited(broker_dir: Path) -> None:
    async with upstream(anything) as device, device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, device.url)
        cookie = await sign_in(client, ctx)
        port = client.server.port
        assert port is not None
        status, body = await raw(port, f"GET /w/{grant}/%2e%2e/x HTTP/1.1",
                                 f"Host: x\r\nCookie: {cookie}\r\n")
        assert status == 400 and "percent-encoding" in body
        from sqlmodel import select

        from broker.store.models import AuditEvent
        async with ctx.store.session() as db:
            rows = (await db.exec(select(AuditEvent).where(
                AuditEvent.kind == "web.request_refused"))).all()
        assert len(rows) == 1 and "%2e%2e" in rows[0].data
    assert device.seen == []


@pytest.mark.parametrize("path", ["a/b", "a%20b/c.js", "x?y", "%25zz", "a/b/", ""])
def test_clean_paths_pass(path: str) -> None:
    assert check_path(path) == path


@pytest.mark.parametrize("path", ["..", "a/../b", "%2e%2e", "%2E./x", "a/%2fb", "a%5Cb",
                                  "a\\b", "/x", "%252e%252e", "a/./b", "a%00", "a b", "a\tb"])
def test_tricky_paths_are_refused(path: str) -> None:
    with pytest.raises(PathRefused):
        check_path(path)


def test_device_origin_and_upstream_urls() -> None:
    origin = DeviceOrigin.from_url("https://Pump.local:8443/ui")
    assert (origin.host, origin.port, origin.base_path) == ("pump.local", 8443, "/ui/")
    assert str(origin.upstream("a%20b", "x=1")) == "https://pump.local:8443/ui/a%20b?x=1"
    for bad in ("ftp://x/", "http:///x", "http://u:p@x/", "http://x/?q", "http://x:99999/"):
        with pytest.raises(ValueError):
            DeviceOrigin.from_url(bad)


def test_locations_and_links_are_mapped_under_the_prefix() -> None:
    origin = DeviceOrigin.from_url("http://10.0.0.7:8080/ui/")
    prefix = "/w/4/"
    assert rewrite_location("http://10.0.0.7:8080/ui/status?x#y", origin, prefix) == \
        "/w/4/status?x#y"
    assert rewrite_location("/ui/login", origin, prefix) == "/w/4/login"
    assert rewrite_location("/ui", origin, prefix) == "/w/4/"
    assert rewrite_location("status", origin, prefix) == "status"
    assert rewrite_location("http://10.0.0.8:8080/ui/x", origin, prefix) == \
        "http://10.0.0.8:8080/ui/x"
    assert rewrite_location("https://10.0.0.7:8080/ui/x", origin, prefix) == \
        "https://10.0.0.7:8080/ui/x"
    html = ('<a HREF="http://10.0.0.7:8080/ui/a">x</a><form action=/ui/post>'
            '<script src="ws://10.0.0.7:8080/ui/ws"></script>'
            '<meta http-equiv="refresh" content="5; url=/ui/next">'
            '<p>href="/ui/not-an-attribute"</p>')
    out = rewrite_html(html, origin, prefix, "wss://broker:8443")
    assert 'HREF="/w/4/a"' in out and "action=/w/4/post" in out
    assert 'src="wss://broker:8443/w/4/ws"' in out and 'content="5; url=/w/4/next"' in out
    assert "<p>href=\"/ui/not-an-attribute\"</p>" in out
