"""Device web UI page load through the broker's web proxy against through nginx.

    .venv/bin/python bench/webload.py [--assets 30] [--asset-kib 20] [--rounds 30]

Starts, on loopback: the device web server of bench/webproxy.py (one HTML page referencing
--assets scripts), `broker serve` (its device web proxy: HTTPS, a signed-in technician, HAR
recording, link rewriting) and nginx (the Debian package) in a temp dir with its own config,
a TLS reverse proxy in front of the same device web server with the broker's certificate,
one worker process (the broker is one event loop), keep-alive to the device and an access
log. A page load is what a browser does: the page, then its assets over 6 connections.
Rounds alternate direct (plain HTTP), nginx and the broker, on warm connections.
Target (issue #18): broker page load <= 1.3x nginx's. With --floor a fourth side runs
bench/floor_web.py, an aiohttp reverse proxy that only proxies (no sign-in, recording or
rewriting): the fastest any web proxy on aiohttp could serve the page on this machine.
Writes bench/results/webload-<UTC time>.json and prints the medians and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from tempfile import TemporaryDirectory

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._kit import profile_top, profiled, started, which_or_exit, write_result
from bench.webproxy import PARALLEL, load_page, sign_in, summary
from tests.integration.harness import BrokerProcess, free_port, wait_for_port

RATIO_TARGET = 1.3


def nginx_config(root: Path, port: int, device_port: int, cert: Path, key: Path) -> Path:
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (root / name).mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # temp dirs stay ours
    config = root / "nginx.conf"
    config.write_text(user + textwrap.dedent(f"""\
        worker_processes 1;
        pid {root}/nginx.pid;
        error_log {root}/error.log warn;
        events {{ worker_connections 1024; }}
        http {{
            access_log {root}/access.log;
            client_body_temp_path {root}/body;
            proxy_temp_path {root}/proxy;
            fastcgi_temp_path {root}/fastcgi;
            uwsgi_temp_path {root}/uwsgi;
            scgi_temp_path {root}/scgi;
            upstream device {{ server 127.0.0.1:{device_port}; keepalive 16; }}
            server {{
                listen 127.0.0.1:{port} ssl;
                ssl_certificate {cert};
                ssl_certificate_key {key};
                location / {{
                    proxy_pass http://device;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    proxy_set_header Host $host;
                }}
            }}
        }}
        """))
    return config


def start_nginx(root: Path, port: int, device_port: int, cert: Path,
                key: Path) -> subprocess.Popen[bytes]:
    nginx = which_or_exit("nginx", "nginx")
    config = nginx_config(root, port, device_port, cert, key)
    check = subprocess.run([nginx, "-t", "-q", "-p", str(root), "-c", str(config)],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(f"nginx rejects {config}: {check.stderr.strip()}")
    proc = subprocess.Popen([nginx, "-p", str(root), "-c", str(config), "-g", "daemon off;"],
                            stderr=subprocess.DEVNULL)
    wait_for_port(port, proc)
    return proc


async def measure(broker: BrokerProcess, device_port: int, nginx_port: int, grant: int,
                  rounds: int, floor_port: int | None) -> dict[str, list[float]]:
    connector = aiohttp.TCPConnector(ssl=False, limit_per_host=PARALLEL)
    async with aiohttp.ClientSession(connector=connector,
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        cookie = {"Cookie": await sign_in(broker, session)}
        sides = {
            "direct": (f"http://127.0.0.1:{device_port}", "/page", {}),
            "nginx": (f"https://127.0.0.1:{nginx_port}", "/page", {}),
            "broker": (f"https://127.0.0.1:{broker.devices_port}", f"/w/{grant}/page", cookie)}
        if floor_port is not None:
            sides["floor"] = (f"https://127.0.0.1:{floor_port}", "/page", {})
        runs: dict[str, list[float]] = {name: [] for name in sides}
        for round_ in range(rounds + 3):  # three warm rounds: connections, TLS, caches
            for name, (base, path, headers) in sides.items():
                took = await load_page(session, base + path, base, headers)
                if round_ >= 3:
                    runs[name].append(took)
        return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assets", type=int, default=30, help="assets on the page (30)")
    parser.add_argument("--asset-kib", type=int, default=20, help="KiB per asset (20)")
    parser.add_argument("--rounds", type=int, default=30, help="page loads per side (30)")
    parser.add_argument("--floor", action="store_true",
                        help="also time bench/floor_web.py, aiohttp proxying and nothing else")
    parser.add_argument("--profile", action="store_true",
                        help="run the broker under cProfile; its top functions go in the JSON")
    args = parser.parse_args()
    if min(args.assets, args.asset_kib, args.rounds) < 1:
        parser.error("--assets, --asset-kib and --rounds must be positive")
    which_or_exit("nginx", "nginx")
    head = started()
    device_port, nginx_port = free_port(), free_port()
    webproxy = Path(__file__).with_name("webproxy.py")
    device = subprocess.Popen([sys.executable, str(webproxy), "--serve-device",
                               str(device_port), "--assets", str(args.assets),
                               "--asset-kib", str(args.asset_kib)])
    nginx: subprocess.Popen[bytes] | None = None
    floor: subprocess.Popen[bytes] | None = None
    floor_port = free_port() if args.floor else None
    with TemporaryDirectory(prefix="bench-webload-") as tmp:
        work = Path(tmp)
        broker = BrokerProcess(work / "broker").init()
        try:
            wait_for_port(device_port, device)
            broker.add_approver()
            broker.add_tech("tech")
            broker.cli("device", "add", "dev", "--host", "127.0.0.1", "--user", "service",
                       "--password-env", "PW", "--web-url", f"http://127.0.0.1:{device_port}/",
                       env={"PW": "unused"})
            broker.cli("device", "web", "dev", "--insecure-http")
            grant = broker.grant("tech", "dev", "1h")
            with profiled(broker, work / "broker.prof") if args.profile \
                    else contextlib.nullcontext():
                broker.serve()
            wait_for_port(broker.devices_port, broker.proc)
            data = broker.root / "data"
            nginx = start_nginx(work / "nginx", nginx_port, device_port, data / "tls.crt",
                                data / "tls.key")
            if floor_port is not None:
                floor = subprocess.Popen(
                    [sys.executable, str(Path(__file__).with_name("floor_web.py")),
                     str(floor_port), str(data / "tls.crt"), str(data / "tls.key"),
                     f"http://127.0.0.1:{device_port}"], stdout=subprocess.DEVNULL)
                wait_for_port(floor_port, floor)
            runs = asyncio.run(measure(broker, device_port, nginx_port, grant, args.rounds,
                                       floor_port))
            har_bytes = sum(p.stat().st_size for p in broker.root.glob("recordings/*/web.har"))
            nginx_log_lines = len((work / "nginx" / "access.log").read_text().splitlines())
        finally:
            for proc in (nginx, floor):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
            broker.stop()
            device.terminate()
            device.wait(10)
        top = profile_top(work / "broker.prof") if args.profile else None
    sides = {name: summary(values) for name, values in runs.items()}
    ratio = round(sides["broker"]["median_ms"] / sides["nginx"]["median_ms"], 2)
    result = {
        "benchmark": "webload", **head, "options": vars(args),
        "page": {"assets": args.assets, "asset_kib": args.asset_kib,
                 "parallel_connections": PARALLEL},
        "sides": sides,
        "summary": {
            "median_ms": {n: s["median_ms"] for n, s in sides.items()},
            "ratio_broker_vs_nginx": ratio,
            "ratio_broker_vs_direct": round(sides["broker"]["median_ms"]
                                            / sides["direct"]["median_ms"], 2),
            "ratio_nginx_vs_direct": round(sides["nginx"]["median_ms"]
                                           / sides["direct"]["median_ms"], 2),
            **({"ratio_floor_vs_nginx": round(sides["floor"]["median_ms"]
                                              / sides["nginx"]["median_ms"], 2)}
               if "floor" in sides else {}),
            "broker_har_bytes": har_bytes, "nginx_access_log_lines": nginx_log_lines,
            "targets": {"at_most_1_3x_nginx": ratio <= RATIO_TARGET}},
        "raw_ms": {n: [round(v * 1000, 2) for v in vals] for n, vals in runs.items()},
        **({"broker_profile_top": top} if top else {}),
    }
    out = write_result("webload", result)
    print(f"page with {args.assets} assets of {args.asset_kib} KiB, {args.rounds} rounds:")
    for name, s in sides.items():
        print(f"  {name:6}  median {s['median_ms']} ms  p90 {s['p90_ms']} ms")
    print(f"  broker/nginx x{ratio} (target <= {RATIO_TARGET}x):"
          f" {'PASS' if ratio <= RATIO_TARGET else 'FAIL'}")
    if "floor" in sides:
        print(f"  floor/nginx x{result['summary']['ratio_floor_vs_nginx']}: aiohttp alone")
    if top:
        print("\n".join(["  broker profile (own time):", *top[:20]]))
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
