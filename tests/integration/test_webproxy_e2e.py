"""The device web proxy end to end: `broker serve`, the simulated device (SSH + web UI) as
its own process, the technician's sign-in link from a real `ssh ... weblogin DEVICE`, and real
headless Chromium using the device's UI through the broker (the broker logs in with the form,
the live log runs over a WebSocket). Revoking the grant stops the page within a second; the
HAR recorded for the session opens in a HAR parser and holds what was done."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from haralyzer import HarParser

from broker.recording.har import read_har
from tests.browser_kit import chromium, need_chromium, screenshot
from tests.integration.harness import BrokerProcess
from tests.integration.test_metrics import fetch, samples, value

PASSWORD = "pump-web-password-1"


@pytest.fixture(scope="module")
def simulated_device(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """`python -m broker.demo` with its web UI: (SSH port, web URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "broker.demo", "--root", str(tmp_path_factory.mktemp("pump")),
         "--port", "0", "--web-port", "0"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "DEVICE_PASSWORD": PASSWORD})
    assert proc.stdout is not None
    ssh = re.search(r"listening on [\d.]+:(\d+)", proc.stdout.readline())
    web = re.search(r"web UI on (\S+)", proc.stdout.readline())
    assert ssh and web
    yield int(ssh.group(1)), web.group(1)
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def web_broker(tmp_path_factory: pytest.TempPathFactory,
               simulated_device: tuple[int, str]) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.config.write_text(proc.config.read_text().replace(
        'public_url = "https://localhost:8443"',
        f'public_url = "https://127.0.0.1:{proc.http_port}"'))
    proc.add_approver()
    proc.add_tech("tech")
    ssh_port, web_url = simulated_device
    proc.cli("device", "add", "pump", "--host", "127.0.0.1", "--port", str(ssh_port),
             "--user", "service", "--password-env", "DEVICE_PASSWORD", "--web-url", web_url,
             env={"DEVICE_PASSWORD": PASSWORD})
    proc.cli("device", "web", "pump", "--insecure-http", "--auth", "form",
             "--form-path", "/login")
    proc.serve()
    yield proc
    proc.stop()


async def test_technician_uses_the_device_ui_through_the_broker(
        web_broker: BrokerProcess, simulated_device: tuple[int, str]) -> None:
    need_chromium()
    broker, device_url = web_broker, simulated_device[1]
    grant = broker.grant("tech", "pump", "10m")
    signin = broker.ssh("tech", "weblogin", "pump")
    assert signin.code == 0, signin.err
    link = re.search(r"https://\S+/w/signin/\S+", signin.out)
    assert link, signin.out
    # on the device origin ([webproxy] listen), never the portal's
    assert link.group(0).startswith(f"https://127.0.0.1:{broker.devices_port}/w/signin/")
    async with chromium() as context:
        page = await context.new_page()  # type: ignore[attr-defined]
        await page.goto(link.group(0))
        await page.click("#open")
        await page.wait_for_selector("#device")
        assert page.url.endswith(f"/w/{grant}/status")  # the device's absolute redirect
        assert "Infusomat Space P" in await page.inner_text("#device")
        cookies = await context.cookies()  # type: ignore[attr-defined]
        assert [(c["name"], c["path"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
            ("broker_web", f"/w/{grant}/", True, "Strict")]  # never the device's own cookie
        await page.click("#live-log")
        await page.wait_for_function(
            "document.getElementById('state').textContent === 'live'", timeout=5000)
        await page.wait_for_function(
            "document.getElementById('log').textContent.includes('web login service')",
            timeout=5000)
        await page.fill("#mark", "hello from the browser")
        await page.click("#send")
        await page.wait_for_function(
            "document.getElementById('log').textContent.includes("
            "'note from web: hello from the browser')", timeout=5000)
        await screenshot(page, "webproxy-live-log")
        # /metrics (issue #18): the web session is live, and bytes came from the device
        status, text = await asyncio.to_thread(fetch, broker.http_port)
        assert status == 200
        seen = samples(text)
        assert value(seen, "broker_live_sessions", protocol="web") == 1
        assert value(seen, "broker_relayed_bytes_total", direction="from_device",
                     transport="web") > 0
        assert value(seen, "broker_relayed_bytes_total", direction="to_device",
                     transport="web") > 0  # the WebSocket message sent

        broker.cli("grant", "revoke", str(grant), "--reason", "e2e over")
        revoked = time.monotonic()
        await page.wait_for_function(
            "document.getElementById('state').textContent.startsWith('closed')", timeout=3000)
        closed_after = time.monotonic() - revoked
        assert closed_after < 1.0, f"the live log closed {closed_after:.2f} s after revoke"
        answer = await page.reload()
        assert answer.status == 403
        assert "access window for pump was closed early" in await page.inner_text("body")
        await screenshot(page, "webproxy-window-closed")

    [directory] = [d for d in broker.recordings() if (d / "web.har").exists()]
    for _ in range(50):
        if (directory / "manifest.sig").exists():
            break
        time.sleep(0.1)
    har = read_har(directory / "web.har")
    assert "_truncated" not in har["log"]
    [page_view] = HarParser(har).pages
    urls = [(e.request.method, e.url, e.status) for e in page_view.entries]
    assert ("POST", f"{device_url}login", 303) in urls  # the injected login
    assert ("GET", f"{device_url}status", 200) in urls
    assert ("GET", f"{device_url}logs", 200) in urls
    assert ("GET", f"{device_url}static/livelog.js", 200) in urls
    [socket] = [e for e in har["log"]["entries"] if e.get("_resourceType") == "websocket"]
    messages = socket["_webSocketMessages"]
    assert {"type": "send", "data": "mark hello from the browser"}.items() <= \
        next(m for m in messages if m["type"] == "send").items()
    assert any("note from web: hello from the browser" in m["data"] for m in messages
               if m["type"] == "receive")
    assert PASSWORD not in (directory / "web.har").read_text()
    manifest = json.loads((directory / "manifest.json").read_text())
    names = {f["name"] for f in manifest["files"]}
    assert {"web.har", "session.json"} <= names and any(n.startswith("websocket-") for n in names)
    verified = broker.cli("recordings", "verify", directory.name.partition("-")[2])
    assert "ok" in verified.out


def test_weblogin_is_refused_without_a_web_grant(web_broker: BrokerProcess) -> None:
    web_broker.add_tech("nobody")
    refused = web_broker.ssh("nobody", "weblogin", "pump")
    assert refused.code == 1 and "broker: weblogin: pump:" in refused.err
    assert "/w/signin/" not in refused.out
    usage = web_broker.ssh("nobody", "weblogin")
    assert usage.code == 2 and "usage: weblogin DEVICE" in usage.err
