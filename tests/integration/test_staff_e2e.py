"""The staff web UI end to end, in real headless Chromium against `broker serve` over TLS:
an auditor signs in (password + TOTP), finds a finished session among the recordings, plays
it in asciinema-player, watches a live `ssh` session as it is typed, and kills it."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.browser_kit import chromium, screenshot
from tests.integration.harness import BrokerProcess, SshdDevice, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "e2e-staff-password-long"
KILL_LINE = "broker: hospital security ended this session: seen enough; the session is closed."


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice
           ) -> Iterator[tuple[BrokerProcess, str]]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.one_grant(sshd_device, "2h")
    proc.cli("staff", "add", "audrey", "--role", "auditor", "--password-env", "STAFF_PW",
             env={"STAFF_PW": PASSWORD})
    enrolled = proc.cli_json("staff", "totp", "enroll", "audrey")
    assert isinstance(enrolled, dict)
    proc.serve()
    wait_for_port(proc.http_port, proc.proc)
    yield proc, str(enrolled["secret"])
    proc.stop()


def wait_for(predicate: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError("condition never held")


def finished_session(broker: BrokerProcess, marker: str) -> str:
    before = set(broker.recordings())
    # The shell prints played-42-MARKER; the terminal's echo of the typed line does not.
    result = broker.ssh("tech+dev", tty=True, input=f"echo played-$((6*7))-{marker}\nexit\n")
    assert result.code == 0, result.err
    (path,) = wait_for(lambda: [p for p in broker.recordings() if p not in before
                                and (p / "manifest.sig").exists()])
    return str(path.name.split("-", 1)[1])


async def sign_in(page: Any, base: str, secret: str) -> None:
    await page.goto(f"{base}/staff/")
    assert "/staff/login" in page.url  # anonymous: sent to the sign-in page
    await page.fill("#name", "audrey")
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url("**/staff/login/totp**")
    await page.fill("#code", pyotp.TOTP(secret).now())
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/staff/")


async def test_an_auditor_replays_a_session_then_watches_and_kills_a_live_one(
        broker: tuple[BrokerProcess, str]) -> None:
    proc, secret = broker
    base = f"https://127.0.0.1:{proc.http_port}"
    marker = uuid.uuid4().hex[:12]
    session_id = await asyncio.to_thread(finished_session, proc, marker)
    async with chromium() as context:
        page = await context.new_page()  # type: ignore[attr-defined]
        problems: list[str] = []
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.on("response", lambda r: problems.append(f"{r.status} {r.url}")
                if r.status >= 400 else None)
        fetched: list[str] = []
        page.on("request", lambda r: fetched.append(r.url))
        await sign_in(page, base, secret)
        cookies = {c["name"]: c for c in await context.cookies()}  # type: ignore[attr-defined]
        session_cookie = cookies["__Host-broker_session"]
        assert session_cookie["secure"] and session_cookie["httpOnly"]
        assert session_cookie["sameSite"] == "Strict" and session_cookie["path"] == "/"
        await screenshot(page, "staff-dashboard")

        # Find the finished session among the recordings, by what was typed in it.
        await page.click("nav.staff-nav >> text=Recordings")
        await page.fill("#q", f"played-42-{marker}")
        await page.click("form.search button[type=submit]")
        await page.click(f"table.hits a:text('{session_id}')")
        await page.wait_for_url(f"**/staff/recordings/{session_id}**")
        assert "ok: signature and every file" in await page.inner_text("#verify")
        player = page.locator(".player .ap-player").first
        await player.wait_for()
        await page.locator(".player").first.click()  # the start overlay: play
        await page.locator(".player .ap-term").first.filter(
            has_text=f"played-42-{marker}").wait_for(timeout=20_000)
        await screenshot(page, "staff-player")

        # A live ssh session, watched as it is typed, then killed.
        ssh = subprocess.Popen(proc.ssh_args("tech+dev", "tech", tty=True),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
        try:
            assert ssh.stdin is not None
            ssh.stdin.write(b"echo started\n")
            ssh.stdin.flush()
            await page.click("nav.staff-nav >> text=Live sessions")
            for _ in range(100):
                if await page.locator("a:text('Watch')").count():
                    break
                await asyncio.sleep(0.2)
                await page.reload()
            await screenshot(page, "staff-live-sessions")
            await page.click("a:text('Watch')")
            await page.wait_for_url("**/watch")
            term = page.locator("#watch-player .ap-term")
            await term.filter(has_text="started").wait_for(timeout=20_000)
            typed = time.monotonic()
            ssh.stdin.write(f"echo watched-$((6*7))-{marker}\n".encode())
            ssh.stdin.flush()
            await term.filter(has_text=f"watched-42-{marker}").wait_for(timeout=10_000)
            shown = time.monotonic() - typed
            await screenshot(page, "staff-watch")
            await page.fill(".kill-form input[name=reason]", "seen enough")
            clicked = time.monotonic()
            await page.click("#kill")
            code = await asyncio.to_thread(ssh.wait, 10)
            elapsed = time.monotonic() - clicked
            err = ssh.stderr.read().decode(errors="replace") if ssh.stderr else ""
        finally:
            if ssh.poll() is None:
                ssh.kill()
        assert code != 0
        assert KILL_LINE in err, err
        assert elapsed < 5, f"ssh ended {elapsed:.1f}s after Kill"
        await page.wait_for_url("**/staff/sessions?killed=*")
        await screenshot(page, "staff-killed")
        assert problems == [], problems  # no CSP violation, no script error
        assert "/static/vendor/asciinema-player.min.js" in " ".join(fetched)
        elsewhere = [u for u in fetched if not u.startswith((base + "/", "data:"))]
        assert elsewhere == [], elsewhere  # nothing from a CDN or any other site
    tail = proc.cli_json("audit", "tail", "-n", "200")
    assert isinstance(tail, list)
    kinds = [(e["kind"], e["actor"]) for e in tail]
    assert ("staff.login_succeeded", "staff:audrey") in kinds
    assert ("recording.viewed", "staff:audrey") in kinds
    assert ("session.watched", "staff:audrey") in kinds
    assert ("session.kill_requested", "staff:audrey") in kinds
    print(f"watch latency {shown:.2f}s; ssh ended {elapsed:.2f}s after Kill was pressed")


def test_the_player_is_the_pinned_npm_package_served_by_the_broker(
        broker: tuple[BrokerProcess, str]) -> None:
    proc, _ = broker
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE  # the broker's self-signed cert
    url = f"https://127.0.0.1:{proc.http_port}/static/vendor/asciinema-player.min.js"
    with urllib.request.urlopen(url, context=tls, timeout=10) as response:
        served = response.read()
    lock = json.loads((ROOT / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/asciinema-player"]
    installed = ROOT / "node_modules" / "asciinema-player"
    assert json.loads((installed / "package.json").read_text())["version"] == pinned["version"]
    assert served == (installed / "dist" / "bundle" / "asciinema-player.min.js").read_bytes()
