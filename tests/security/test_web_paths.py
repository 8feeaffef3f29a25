"""Path forms: no spelling of a path (``..;``, overlong UTF-8 ``%c0%ae``, ``%2e%2e``,
``%252e``, backslashes, ``%00``, ``;`` parameters, ``//``, mixed case, fullwidth dots) takes a
technician out of the grant's device base path, however lenient the device's own decoding.

:func:`broker.webproxy.paths.check_path` is the one place that decides; hypothesis builds
paths from the dangerous pieces and a model of the most lenient device checks every path it
lets through. The real proxy is then fed the known tricks on a raw socket."""

from __future__ import annotations

import asyncio
import posixpath
import unicodedata
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.webproxy.paths import PathRefused, check_path
from tests.unit.webproxy_kit import add_grant, sign_in, upstream
from tests.web_kit import device_origin

PIECES = ["a", "b", "x.js", ".", "..", "...", "/", "//", "\\", ";", ";x", "..;", "%2e",
          "%2E", "%2e%2e", "%2E%2e", "%2f", "%2F", "%5c", "%5C", "%3b", "%3B", "%00", "%0a",
          "%20", "%25", "%252e", "%25252e", "%252f", "%c0%ae", "%c0%af", "%c1%9c", "%e0%80%ae",
          "%c0", "%ae", "%", "%g1", "%ef%bc%8e", "%ef%bc%8f", "%e2%80%a4", "\uff0e", "~",
          "%7e", "%41", "%C3%A9", "%e2%88%95", "?", "#", ":", "@", "%3a", "%40", "+"]
BASE = "/ui/"


def _lenient_utf8(data: bytes) -> str:
    """Decode like a careless device: overlong forms accepted (``c0 ae`` is '.')."""
    out, i = [], 0
    while i < len(data):
        b = data[i]
        if 0xc0 <= b <= 0xdf and i + 1 < len(data) and 0x80 <= data[i + 1] <= 0xbf:
            out.append(chr(((b & 0x1f) << 6) | (data[i + 1] & 0x3f)))
            i += 2
        elif 0xe0 <= b <= 0xef and i + 2 < len(data) and all(
                0x80 <= c <= 0xbf for c in data[i + 1:i + 3]):
            out.append(chr(((b & 0x0f) << 12) | ((data[i + 1] & 0x3f) << 6)
                           | (data[i + 2] & 0x3f)))
            i += 3
        else:
            out.append(chr(b))
            i += 1
    return "".join(out)


def device_views(path: str) -> list[str]:
    """Every path a lenient device might make of ``path``: decoded up to three times
    (strict, lenient overlong, Latin-1), Unicode-folded, backslashes as slashes, ``;``
    parameters cut off each segment."""
    views, current = [], path
    for _ in range(3):
        for decoded in (unquote(current), _lenient_utf8(unquote_to_bytes(current)),
                        unquote(current, encoding="latin-1")):
            for form in (decoded, unicodedata.normalize("NFKC", decoded)):
                form = form.replace("\\", "/")
                views.append("/".join(seg.split(";")[0] for seg in form.split("/")))
        current = unquote(current)
    return views


def stays_inside(view: str) -> bool:
    joined = BASE + view
    if "\x00" in joined:
        return False
    normal = posixpath.normpath(joined)
    return (normal + "/").startswith(BASE) and not any(
        seg.strip(". ") == "" and seg for seg in view.split("/"))


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), min_size=1, max_size=8))
def test_every_path_let_through_stays_under_the_base(pieces: list[str]) -> None:
    path = "".join(pieces)
    try:
        accepted = check_path(path)
    except PathRefused:
        return
    assert accepted == path  # one spelling: what was checked is what the device gets
    for view in device_views(path):
        assert stays_inside(view), (path, view)


@settings(max_examples=500, deadline=None)
@given(st.text(min_size=0, max_size=30))
def test_any_text_is_refused_or_stays_under_the_base(text: str) -> None:
    try:
        accepted = check_path(text)
    except PathRefused:
        return
    for view in device_views(accepted):
        assert stays_inside(view), (text, view)


TRICKS = ["..;/x", "a/..;/..;/x", "%c0%ae%c0%ae/x", "%c0%ae%c0%ae%c0%afx", "%e0%80%ae%e0%80%ae/x",
          "%2e%2e/x", "%2E%2e/x", ".%2e/x", "%252e%252e/x", "%25252e%25252e/x", "a%5c..%5cx",
          "..%5cx", "a/%00/x", "a%00.html", "a;jsessionid=1/../x", "a//x", "%2f%2fx",
          "%ef%bc%8e%ef%bc%8e/x", "a/.../x", "a/%20../x", "%41dmin", "A/%2E%2E/x"]


def anything(seen: list[str]) -> web.Application:
    async def any_path(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.Response(text="device")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", any_path)
    return app


@pytest.mark.parametrize("trick", TRICKS)
def test_known_tricks_are_refused(trick: str) -> None:
    with pytest.raises(PathRefused):
        check_path(trick)


async def test_the_proxy_refuses_every_trick_before_the_device(broker_dir: Path) -> None:
    async with upstream(anything) as device, device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, device.url + "ui/")
        cookie = await sign_in(client, ctx)
        port = client.server.port
        for trick in TRICKS:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /w/{grant}/{trick} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\n"
                         "Connection: close\r\n\r\n".encode())
            status = int((await reader.read()).split(b" ", 2)[1])
            writer.close()
            assert status == 400, (trick, status)
        fine = await client.get(f"/w/{grant}/caf%C3%A9/a%20b.html?q=1",
                                headers={"Cookie": cookie})
        assert fine.status == 200
    assert device.seen == ["/ui/caf%C3%A9/a%20b.html?q=1"]
