"""The floor for bench/webload.py: an aiohttp reverse proxy that does nothing but proxy.

    .venv/bin/python bench/floor_web.py PORT CERT KEY DEVICE_URL

HTTPS on PORT with the broker's certificate, on uvloop, every request relayed to DEVICE_URL
over kept-alive connections (the broker's upstream connector settings) and the answer
streamed back: no sign-in, no session, no recording, no header or link rewriting. No web
proxy built on aiohttp can serve a page faster than this on the same machine, so
`webload.py --floor` runs it beside nginx and the broker to say how much of the gap to nginx
is the broker's and how much is aiohttp's.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
from pathlib import Path

import aiohttp
import uvloop
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from broker.webproxy.upstream_headers import HOP_BY_HOP

CHUNK = 64 * 1024
DROPPED = HOP_BY_HOP | {"content-length"}  # set again from the device's answer


async def serve(port: int, cert: str, key: str, device: str) -> None:
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=32), auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar())

    async def relay(request: web.Request) -> web.StreamResponse:
        async with client.request(request.method, device + request.path_qs,
                                  headers={"Accept": request.headers.get("Accept", "*/*")},
                                  allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for name, value in upstream.headers.items():
                if name.lower() not in DROPPED:
                    response.headers.add(name, value)
            if upstream.content_length is not None:
                response.content_length = upstream.content_length
            await response.prepare(request)
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", relay)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    print("ready", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await client.close()


def main() -> None:
    port, cert, key, device = sys.argv[1:5]
    uvloop.run(serve(int(port), cert, key, device.rstrip("/")))


if __name__ == "__main__":
    main()
