"""Security issue #16, the web side: a device web page (a compromised device's own script)
runs in real Chromium next to a signed-in staff member, and cannot read or change anything
of the portal; with one host per grant it cannot reach another grant's device either.

Both listeners run as ``broker serve`` runs them (real TLS, real SQLite); Chromium resolves
``broker.test`` and ``*.devices.test`` to loopback, so the portal and the device origin are
the same host on two ports (cookies are not isolated by port), or two sites' hosts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import asyncssh
from sqlmodel import select

from broker.approvals import links
from broker.http.security import csrf_token
from broker.services.device_web import WebOptions, configure
from broker.services.web_signin import create_signin
from broker.store.models import AccessRequest, AuditEvent
from broker.webproxy.origin import signin_url
from tests.browser_kit import chromium, need_chromium, screenshot
from tests.security.web_origin_kit import RESOLVE, Device, both_listeners
from tests.unit.staff_kit import PASSWORD, add_staff, world
from tests.unit.webproxy_kit import add_grant, upstream

ATTACK = """
const out = {};
async function read(name, url) {
  try {
    const r = await fetch(url, {credentials: "include"});
    out[name] = "READ " + r.status + " " + (await r.text()).slice(0, 60);
  } catch (e) { out[name] = "blocked"; }
}
async function post(name, url, body) {
  try {
    await fetch(url, {method: "POST", mode: "no-cors", credentials: "include",
                      body: new URLSearchParams(body)});
    out[name] = "sent";
  } catch (e) { out[name] = "blocked"; }
}
function framed(name, url, body) {
  return new Promise(done => {
    const frame = document.createElement("iframe");
    frame.name = name;
    document.body.appendChild(frame);
    frame.onload = () => {
      try { out[name] = "READ " + frame.contentDocument.body.innerText.slice(0, 60); }
      catch (e) { out[name] = "blocked"; }
      done();
    };
    if (body === null) { frame.src = url; return; }
    const form = document.createElement("form");
    form.method = "post"; form.action = url; form.target = name;
    for (const [k, v] of Object.entries(body)) {
      const input = document.createElement("input");
      input.name = k; input.value = v; form.appendChild(input);
    }
    document.body.appendChild(form);
    form.submit();
  });
}
(async () => {
  for (const [name, url] of Object.entries(DATA.reads)) await read(name, url);
  for (const [name, [url, body]] of Object.entries(DATA.posts)) {
    await post(name, url, body);
    await framed("form_" + name, url, body);
  }
  for (const [name, url] of Object.entries(DATA.frames)) await framed(name, url, null);
  document.getElementById("out").textContent = JSON.stringify(out);
  document.body.dataset.done = "1";
})();
"""


async def _pending_state(ctx, request_id: int) -> str:  # type: ignore[no-untyped-def]
    async with ctx.store.session() as db:
        row = await db.get(AccessRequest, request_id)
        assert row is not None
        return row.state


async def _kinds(ctx) -> list[str]:  # type: ignore[no-untyped-def]
    async with ctx.store.session() as db:
        return list((await db.exec(select(AuditEvent.kind))).all())


async def test_a_device_page_cannot_read_or_drive_the_portal(broker_dir: Path,
                                                             tmp_path: Path) -> None:
    need_chromium()
    key = tmp_path / "bob.pub"
    key.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode())
    device = Device(ATTACK)
    async with upstream(device.app) as device_web, both_listeners(broker_dir) as broker:
        ctx = broker.ctx
        ids = await world(ctx, key)
        await add_staff(ctx, "dana", "approver", approver="alice")
        await configure(ctx, "test", "pump-1", WebOptions(url=device_web.url,
                                                          insecure_http=True))
        link = await links.issue_link(ctx, links.web_secret(ctx.config), ids["pending"],
                                      "alice", "test")
        portal = broker.portal
        async with chromium((RESOLVE,)) as context:
            staff = await context.new_page()  # type: ignore[attr-defined]
            await staff.goto(f"{portal}/staff/login")
            await staff.fill("input[name=name]", "dana")
            await staff.fill("input[name=password]", PASSWORD)
            await staff.click("button[type=submit]")
            await staff.wait_for_url(f"{portal}/staff/")
            jar = {c["name"]: c for c in await context.cookies()}  # type: ignore[attr-defined]
            session = jar["__Host-broker_session"]  # host-only, Path=/, no subdomain can set it
            assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
            await staff.goto(f"{portal}/staff/requests")
            leaked = re.search(r'name="csrf" value="([^"]+)"', await staff.content())
            assert leaked  # the worst case: the device's script even knows the CSRF tokens
            device.data = {
                "reads": {"staff": f"{portal}/staff/", "requests": f"{portal}/staff/requests",
                          "api": f"{portal}/api/v1/requests", "approve": link.url},
                "posts": {
                    "decide": [f"{portal}/staff/requests/{ids['pending']}/decide",
                               {"csrf": leaked.group(1), "decision": "approve"}],
                    "approve_link": [link.url, {"csrf": csrf_token_for(ctx, link),
                                                "decision": "approve"}]},
                "frames": {"frame_staff": f"{portal}/staff/requests",
                           "frame_approve": link.url}}
            token, _ = await create_signin(ctx, "bob", "pump-1", "test")
            grant = ids["grant"]
            tech = await context.new_page()  # type: ignore[attr-defined]
            await tech.goto(signin_url(ctx.config.settings, grant, token))
            assert tech.url.startswith(f"https://broker.test:{broker.devices_port}/w/signin/")
            await tech.click("#open")
            await tech.wait_for_selector("body[data-done]", state="attached", timeout=20_000)
            results = json.loads(await tech.inner_text("#out"))
            await screenshot(tech, "security-device-page-attacks-portal")
            assert tech.url == f"https://broker.test:{broker.devices_port}/w/{grant}/"
        # nothing of the portal was readable, and nothing changed
        assert all(not value.startswith("READ") for value in results.values()), results
        assert await _pending_state(ctx, ids["pending"]) == "pending"
        kinds = await _kinds(ctx)
        assert kinds.count("web.cross_origin_refused") >= 2  # refused, and audited
        # the device never saw a broker cookie or credential, though the browser has them
        for path, headers in device.seen:
            lowered = {k.lower(): v for k, v in headers.items()}
            assert "cookie" not in lowered and "authorization" not in lowered, (path, headers)
        # the staff member's own decision still works from the portal's page
        async with chromium((RESOLVE,)) as context:
            staff = await context.new_page()  # type: ignore[attr-defined]
            await staff.goto(f"{portal}/staff/login")
            await staff.fill("input[name=name]", "dana")
            await staff.fill("input[name=password]", PASSWORD)
            await staff.click("button[type=submit]")
            await staff.wait_for_url(f"{portal}/staff/")
            await staff.goto(f"{portal}/staff/requests")
            await staff.click(f"#request-{ids['pending']} button.approve")
            await staff.wait_for_url(re.compile(r".*done=approved.*"))
        assert await _pending_state(ctx, ids["pending"]) == "approved"


def csrf_token_for(ctx, link) -> str:  # type: ignore[no-untyped-def]
    """The approval page's CSRF token for ``link`` (as if the device had read it)."""
    from aiohttp import web

    from broker.http.keys import SECRET

    app = web.Application()
    app[SECRET] = links.web_secret(ctx.config)
    return csrf_token(app, link.claims.jti)


async def test_one_grants_page_cannot_reach_another_grants_device(broker_dir: Path) -> None:
    need_chromium()
    attacker = Device(ATTACK)
    victim = Device("document.body.dataset.done = '1';")
    async with upstream(attacker.app) as evil_web, upstream(victim.app) as victim_web, \
            both_listeners(broker_dir, grant_host=True) as broker:
        ctx = broker.ctx
        evil = await add_grant(ctx, evil_web.url, device="evil")
        good = await add_grant(ctx, victim_web.url, device="good")
        base = f"https://{good}.devices.test:{broker.devices_port}/w/{good}/"
        attacker.data = {"reads": {"other_grant": base + "secret",
                                   "other_grant_signin": base.replace(f"/w/{good}/",
                                                                      "/w/signin/x")},
                         "posts": {"other_post": [base + "settings", {"reboot": "now"}]},
                         "frames": {"frame_other": base + "status"}}
        async with chromium((RESOLVE,)) as context:
            page = await context.new_page()  # type: ignore[attr-defined]
            token, _ = await create_signin(ctx, "tech", "good", "test")
            await page.goto(signin_url(ctx.config.settings, good, token))
            await page.click("#open")
            await page.wait_for_selector("body[data-done]", state="attached")
            assert page.url == base
            token, _ = await create_signin(ctx, "tech", "evil", "test")
            await page.goto(signin_url(ctx.config.settings, evil, token))
            await page.click("#open")
            await page.wait_for_selector("body[data-done]", state="attached", timeout=20_000)
            assert page.url == f"https://{evil}.devices.test:{broker.devices_port}/w/{evil}/"
            results = json.loads(await page.inner_text("#out"))
            # the wrong host for a grant is refused outright, even with its cookie
            wrong = await page.goto(
                f"https://{evil}.devices.test:{broker.devices_port}/w/{good}/secret")
            assert wrong is not None and wrong.status == 403
        assert all(not value.startswith("READ") for value in results.values()), results
        assert [path for path, _ in victim.seen] == ["/"]  # only the technician's own visit
        kinds = await _kinds(ctx)
        assert "web.cross_origin_refused" in kinds and "web.grant_host_refused" in kinds


async def test_portal_serves_no_device_content_and_device_origin_no_portal(
        broker_dir: Path) -> None:
    import aiohttp

    async with both_listeners(broker_dir) as broker, aiohttp.ClientSession() as http:
        portal = f"https://127.0.0.1:{broker.portal_port}"
        devices = f"https://127.0.0.1:{broker.devices_port}"
        moved = await http.get(f"{portal}/w/3/status?x=1", ssl=False, allow_redirects=False)
        assert moved.status == 302
        assert moved.headers["Location"] == \
            f"https://broker.test:{broker.devices_port}/w/3/status?x=1"
        assert (await http.post(f"{portal}/w/3/x", ssl=False)).status == 404
        for path in ("/staff/", "/staff/login", "/api/v1/requests", "/approve/x",
                     "/static/staff.js", "/static/broker.css", "/healthz", "/"):
            answer = await http.get(devices + path, ssl=False, allow_redirects=False)
            assert answer.status == 404, (path, answer.status)
        style = await http.get(f"{devices}/w/_broker/broker.css", ssl=False)
        assert style.status == 200 and "text/css" in style.headers["Content-Type"]
