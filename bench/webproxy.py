"""Web proxy benchmark: page-load time of a device web page, direct vs through the broker.

    .venv/bin/python bench/webproxy.py [--assets 30] [--asset-kib 20] [--rounds 20]

Starts, on loopback: a device web server (its own process; one HTML page referencing N
scripts) and `broker serve` (HTTPS, recording every exchange as HAR). A "page load" is what a
browser does: fetch the page, then its N assets with 6 connections at a time. Each round
loads the page directly and through the broker's proxy (signed in with a real sign-in link,
link rewriting on), alternately. Writes bench/results/webproxy-<UTC time>.json and prints
the medians and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.harness import BrokerProcess, free_port, wait_for_port

RESULTS = Path(__file__).resolve().parent / "results"
PARALLEL = 6  # connections per host, as browsers use


def serve_device(port: int, assets: int, asset_kib: int) -> None:
    body = (b"/* asset */\n" + b"x" * 1024) * asset_kib
    links = "".join(f'<script src="/asset/{i}.js"></script>' for i in range(assets))
    page = f"<!doctype html><html><head>{links}</head><body>device page</body></html>"

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    async def asset(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/javascript")

    app = web.Application()
    app.router.add_get("/page", index)
    app.router.add_get("/asset/{name}", asset)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


async def load_page(session: aiohttp.ClientSession, page_url: str, base: str,
                    headers: dict[str, str]) -> float:
    start = time.perf_counter()
    async with session.get(page_url, headers=headers) as answer:
        html = await answer.text()
        assert answer.status == 200, html[:200]
    sources = re.findall(r'src="([^"]+)"', html)
    limit = asyncio.Semaphore(PARALLEL)

    async def fetch(src: str) -> None:
        async with limit, session.get(base + src, headers=headers) as response:
            await response.read()
            assert response.status == 200

    await asyncio.gather(*(fetch(src) for src in sources))
    return time.perf_counter() - start


async def sign_in(broker: BrokerProcess, session: aiohttp.ClientSession) -> str:
    from broker.config import load_config
    from broker.services.context import Context
    from broker.services.web_signin import create_signin

    ctx = Context.open(load_config(broker.config))
    try:
        token, _ = await create_signin(ctx, "tech", "dev", "bench")
    finally:
        await ctx.close()
    url = f"https://127.0.0.1:{broker.devices_port}/w/signin/{token}"  # the device origin
    async with session.get(url) as page:
        csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())
        pre = page.cookies["broker_web_signin"].value  # the sign-in form's own cookie
    assert csrf
    async with session.post(url, data={"csrf": csrf.group(1)}, allow_redirects=False,
                            headers={"Cookie": f"broker_web_signin={pre}"}) as done:
        assert done.status == 303, await done.text()
        return f"broker_web={done.cookies['broker_web'].value}"


async def measure(broker: BrokerProcess, device_port: int, grant: int, rounds: int
                  ) -> dict[str, list[float]]:
    connector = aiohttp.TCPConnector(ssl=False, limit_per_host=PARALLEL)
    async with aiohttp.ClientSession(connector=connector,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        cookie = {"Cookie": await sign_in(broker, session)}
        direct_base = f"http://127.0.0.1:{device_port}"
        proxy_base = f"https://127.0.0.1:{broker.devices_port}"
        runs: dict[str, list[float]] = {"direct": [], "proxied": []}
        for warm in range(2):  # connections, TLS sessions, the broker's device client
            await load_page(session, f"{direct_base}/page", direct_base, {})
            await load_page(session, f"{proxy_base}/w/{grant}/page", proxy_base, cookie)
            del warm
        for _ in range(rounds):
            runs["direct"].append(await load_page(session, f"{direct_base}/page",
                                                  direct_base, {}))
            runs["proxied"].append(await load_page(session, f"{proxy_base}/w/{grant}/page",
                                                   proxy_base, cookie))
        return runs


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(statistics.median(ordered) * 1000, 2),
            "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
            "min_ms": round(ordered[0] * 1000, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--assets", type=int, default=30)
    parser.add_argument("--asset-kib", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--serve-device", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_device:
        serve_device(args.serve_device, args.assets, args.asset_kib)
        return
    device_port = free_port()
    device = subprocess.Popen([sys.executable, __file__, "--serve-device", str(device_port),
                               "--assets", str(args.assets), "--asset-kib", str(args.asset_kib)])
    with TemporaryDirectory(prefix="bench-webproxy-") as work:
        broker = BrokerProcess(Path(work) / "broker").init()
        try:
            wait_for_port(device_port, device)
            broker.add_approver()
            broker.add_tech("tech")
            broker.cli("device", "add", "dev", "--host", "127.0.0.1", "--user", "service",
                       "--password-env", "PW", "--web-url", f"http://127.0.0.1:{device_port}/",
                       env={"PW": "unused"})
            broker.cli("device", "web", "dev", "--insecure-http")
            grant = broker.grant("tech", "dev", "1h")
            broker.serve()
            wait_for_port(broker.http_port, broker.proc)
            runs = asyncio.run(measure(broker, device_port, grant, args.rounds))
            har = next(broker.root.glob("recordings/*/web.har"))
            har_bytes = har.stat().st_size
        finally:
            broker.stop()
            device.terminate()
            device.wait(10)
    direct, proxied = summary(runs["direct"]), summary(runs["proxied"])
    result = {
        "benchmark": "webproxy page load",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_1min": os.getloadavg()[0]},
        "page": {"assets": args.assets, "asset_kib": args.asset_kib,
                 "parallel_connections": PARALLEL},
        "rounds": args.rounds,
        "direct": direct, "proxied": proxied,
        "ratio_median": round(proxied["median_ms"] / direct["median_ms"], 2),
        "har_bytes_recorded": har_bytes,
        "raw_ms": {k: [round(v * 1000, 2) for v in vals] for k, vals in runs.items()},
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"webproxy-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"page with {args.assets} assets of {args.asset_kib} KiB, {args.rounds} rounds:")
    print(f"  direct   median {direct['median_ms']} ms  p90 {direct['p90_ms']} ms")
    print(f"  proxied  median {proxied['median_ms']} ms  p90 {proxied['p90_ms']} ms"
          f"  (x{result['ratio_median']}, HTTPS + recording + link rewriting)")
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
