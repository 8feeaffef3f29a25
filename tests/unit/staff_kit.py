"""Shared set-up for the staff web UI tests: accounts, signing in through the real forms,
and a directory with a technician, a device, a request and a recording."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pyotp
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient

from broker.recording import SessionRecording
from broker.recording.manifest import signer_for
from broker.services.context import Context
from broker.services.directory import Directory, parse_public_keys
from broker.services.grants import Grants
from broker.services.requests import Requests
from broker.services.staff_accounts import StaffAccounts
from broker.store.models import Device, Session

PASSWORD = "correct-horse-battery-staple"
Client = TestClient[web.Request, web.Application]


async def add_staff(ctx: Context, name: str, role: str, approver: str | None = None,
                    totp: bool = False) -> str | None:
    """Add an account with :data:`PASSWORD`; return its TOTP secret when enrolled."""
    accounts = StaffAccounts(ctx, "test")
    await accounts.add(name, role, PASSWORD, approver)
    if totp:
        secret, _ = await accounts.enroll_totp(name)
        return secret
    return None


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


async def post_login(client: Client, name: str, password: str) -> ClientResponse:
    page = await client.get("/staff/login")
    return await client.post("/staff/login", allow_redirects=False, data={
        "csrf": csrf_of(await page.text()), "name": name, "password": password, "next": ""})


async def post_code(client: Client, code: str) -> ClientResponse:
    page = await client.get("/staff/login/totp")
    assert page.status == 200, await page.text()
    return await client.post("/staff/login/totp", allow_redirects=False,
                             data={"csrf": csrf_of(await page.text()), "code": code})


def code_at(ctx: Context, secret: str, steps: int = 0) -> str:
    return pyotp.TOTP(secret).at(ctx.now() + timedelta(seconds=30 * steps))


async def sign_in(client: Client, ctx: Context, name: str, secret: str | None = None) -> str:
    """Sign in through the forms; return a CSRF token for the signed-in session's POSTs."""
    response = await post_login(client, name, PASSWORD)
    assert response.status == 303, await response.text()
    if secret is not None:
        response = await post_code(client, code_at(ctx, secret))
        assert response.status == 303, await response.text()
    home = await client.get("/staff/")
    assert home.status == 200, await home.text()
    return csrf_of(await home.text())


async def world(ctx: Context, pubkey: Path) -> dict[str, int]:
    """Approver ``alice``, technician ``bob`` (Acme), device ``pump-1`` (active) and
    ``old-xray`` (retired), one pending request and one approved (a grant)."""
    directory = Directory(ctx, "test")
    await directory.add_approver("alice", "alice@hospital.example", ["biomed"])
    await directory.add_approver("carol", "carol@hospital.example", ["biomed"])
    await directory.add_technician("bob", "Acme Medical",
                                   parse_public_keys(pubkey.read_text(), "key"))
    for name in ("pump-1", "old-xray"):
        await directory.add_device(Device(name=name, host="127.0.0.1", port=22,
                                          login_user="svc", model="Infusomat",
                                          department="ICU", created_at=ctx.now()),
                                   "password", b"device-secret")
    await directory.set_device_state("old-xray", "retired")
    requests = Requests(ctx, "technician:bob")
    pending = await requests.create("bob", "pump-1", timedelta(hours=1), "replace the battery")
    approved = await requests.create("bob", "pump-1", timedelta(hours=2), "firmware update")
    decision = await Requests(ctx, "test").decide(approved.id or 0, "carol", True)
    assert decision.grant is not None
    return {"pending": pending.id or 0, "grant": decision.grant.id or 0}


async def recording(ctx: Context, session_id: str, text: str, live: bool = False) -> Path:
    """A recorded terminal session printing ``text`` (sealed unless ``live``)."""
    rec = SessionRecording.create(
        ctx.config.recordings_dir, session_id, ctx.now(),
        {"technician": "bob", "vendor": "Acme Medical", "device": "pump-1", "grant": 1,
         "client": "127.0.0.1"}, signer=signer_for(ctx.config))
    writer = rec.terminal(0, width=80, height=24, term="xterm", env={})
    writer.output(f"$ echo {text}\r\n{text}\r\n".encode())
    writer.input(b"exit\r")
    if not live:
        await rec.close("client closed the session")
    else:
        writer.close()
    return rec.path


async def live_session(ctx: Context, session_id: str, grant_id: int, recording: str) -> None:
    grant = (await Grants(ctx, "test").show(grant_id))
    async with ctx.store.session() as db:
        db.add(Session(id=session_id, grant_id=grant_id, technician_id=grant.technician.id or 0,
                       device_id=grant.device.id or 0, node="node-x", client_addr="10.0.0.9",
                       recording=recording, started_at=ctx.now()))
