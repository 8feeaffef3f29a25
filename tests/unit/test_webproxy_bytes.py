"""Header bytes that are not UTF-8 (a device's Latin-1 firmware, a browser extension's junk):
the exchange is relayed as usual and recorded whole in the HAR, the bytes shown as ``\\xNN``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from broker.recording.har import read_har
from tests.unit.webproxy_kit import add_grant, sign_in
from tests.web_kit import device_origin

ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
          b"X-Firmware: caf\xe9 \xff\xfe\r\nConnection: close\r\n\r\nok")


@asynccontextmanager
async def latin1_device(requests: list[bytes]) -> AsyncIterator[str]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(ANSWER)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    finally:
        server.close()


async def raw_get(port: int, path: str, cookie: str, extra: bytes) -> bytes:
    """A GET written byte for byte, as no HTTP client library would write it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n"
                 "Connection: close\r\n".encode() + extra + b"\r\n")
    answer = await reader.read()
    writer.close()
    return answer


def responses(broker_dir: Path) -> dict[str, Any]:
    [har] = list((broker_dir / "recordings").glob("*/web.har"))
    return {e["request"]["url"].rsplit("/", 1)[1]: e
            for e in read_har(har)["log"]["entries"]}


async def test_header_bytes_that_are_not_utf8_are_relayed_and_recorded(broker_dir: Path
                                                                        ) -> None:
    seen: list[bytes] = []
    async with latin1_device(seen) as url, device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, url)
        cookie = await sign_in(client, ctx)
        answer = await client.get(f"/w/{grant}/from-device", headers={"Cookie": cookie})
        assert answer.status == 200 and await answer.read() == b"ok"
        raw = await raw_get(client.server.port or 0, f"/w/{grant}/from-browser", cookie,
                            b"X-Client: na\xefve \x80\r\n")
        assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"\r\n\r\nok"), raw[:300]
    assert seen[-1].startswith(b"GET /from-browser ")
    entries = responses(broker_dir)
    from_device = {h["name"]: h["value"]
                   for h in entries["from-device"]["response"]["headers"]}
    assert from_device["X-Firmware"] == "caf\\xe9 \\xff\\xfe"
    from_browser = {h["name"]: h["value"]
                    for h in entries["from-browser"]["request"]["headers"]}
    assert from_browser["X-Client"] == "na\\xefve \\x80"
