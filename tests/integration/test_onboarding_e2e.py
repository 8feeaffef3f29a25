"""End to end, all real: an admin invites a technician (`broker vendor invite`), the broker
e-mails the link (a real aiosmtpd server), the technician opens it in headless Chromium on a
375-px phone screen and pastes an SSH public key, is refused by the broker while pending, a
hospital admin approves in the portal (Chromium), the vendor contact is e-mailed, and the
technician's real `ssh` with that key reaches the menu and, with a grant, the device. Then
the vendor contact signs in by e-mailed link and disables the technician: refused again."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.approval_kit import Mailbox, body_text, set_config, smtp_server
from tests.browser_kit import PHONE, chromium, need_chromium, screenshot
from tests.integration.harness import BrokerProcess, SshdDevice, keygen, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]  # two browsers, a loaded host
PASSWORD = "e2e-admin-password-long"
CONTACT = "boss@acme.example"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def broker(tmp_path: Path, sshd_device: SshdDevice,
           mailbox: tuple[Mailbox, int]) -> Iterator[BrokerProcess]:
    need_chromium()
    _box, port = mailbox
    proc = BrokerProcess(tmp_path / "broker").init()
    set_config(proc.root, "broker", public_url=f"https://127.0.0.1:{proc.http_port}")
    set_config(proc.root, "notify", smtp_host="127.0.0.1", smtp_port=port,
               mail_from="broker@hospital.example")
    proc.cli("vendor", "add", "Acme Medical", "--domain", "acme.example", "--contact", CONTACT)
    proc.add_approver()
    proc.add_sshd_device("dev", sshd_device)
    proc.cli("staff", "add", "ada", "--role", "admin", "--password-env", "STAFF_PW",
             env={"STAFF_PW": PASSWORD})
    proc.serve()
    wait_for_port(proc.http_port, proc.proc)
    try:
        yield proc
    finally:
        proc.stop()


async def wait_for_mail(box: Mailbox, address: str, count: int = 1,
                        timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = box.to(address)
        if len(found) >= count:
            return body_text(found[count - 1])
        await asyncio.sleep(0.2)
    raise AssertionError(f"no mail {count} to {address} within {timeout} s")


async def staff_sign_in(page: Any, base: str) -> None:
    await page.goto(f"{base}/staff/login")
    await page.fill("#name", "ada")
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/staff/")


async def test_invite_enrol_on_a_phone_approve_in_the_portal_then_ssh(
        broker: BrokerProcess, mailbox: tuple[Mailbox, int], tmp_path: Path) -> None:
    proc, (box, _port) = broker, mailbox
    base = f"https://127.0.0.1:{proc.http_port}"
    wrong = proc.cli("vendor", "invite", "Acme Medical", "--email", "x@evil.example",
                     check=False)
    assert wrong.code == 1 and wrong.err.count("\n") == 1 and "not in vendor" in wrong.err
    invited = proc.cli_json("vendor", "invite", "Acme Medical", "--email", "jane@acme.example",
                            "--name", "jane")
    assert isinstance(invited, dict) and invited["state"] == "open"
    body = await wait_for_mail(box, "jane@acme.example")
    (link,) = re.findall(rf"{re.escape(base)}/onboard/\S+", body)
    key = keygen(tmp_path / "jane_key", "jane@laptop")
    proc.tech_keys["jane"] = key

    async with chromium() as context:
        page = await context.new_page()  # type: ignore[attr-defined]
        await page.set_viewport_size(PHONE)
        response = await page.goto(link)
        assert response.status == 200
        assert "Acme Medical" in await page.inner_text("main")
        assert await page.input_value("#name") == "jane"
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width} px)"
        await page.fill("#key", "ssh-dss AAAAB3NzaC1kc3MAAACBAP")
        await page.click("button[type=submit]")
        assert "not an OpenSSH public key" in await page.inner_text("#error")
        await page.fill("#key", Path(f"{key}.pub").read_text())
        await screenshot(page, "onboard-phone-form")
        await page.click("button[type=submit]")
        await page.wait_for_selector("#pending")
        assert await page.inner_text("#tech-name") == "jane"
        await screenshot(page, "onboard-phone-pending")
        again = await page.goto(link)
        assert again.status == 409

        refused = proc.ssh("jane")
        assert refused.code != 0
        assert "waiting for the hospital's approval" in refused.out + refused.err

        admin = await context.new_page()  # type: ignore[attr-defined]
        await staff_sign_in(admin, base)
        await admin.goto(f"{base}/staff/vendors")
        assert "jane" in await admin.inner_text("#pending")
        await admin.click("#pending a")
        await admin.click("text=Approve jane")
        await admin.wait_for_selector("text=jane is approved")
        assert await admin.inner_text("#tech-jane .state") == "enabled"
        await screenshot(admin, "onboard-portal-approved")

    approved = await wait_for_mail(box, CONTACT)
    assert "jane" in approved and "approved" in approved
    menu = proc.ssh("jane")
    assert menu.code == 0, menu.err
    proc.grant("jane", "dev", "10m")
    inside = proc.ssh("jane+dev", "echo", "hello-from-device")
    assert inside.code == 0, inside.err
    assert "hello-from-device" in inside.out

    # the vendor contact signs in by e-mailed link and disables jane: her live session is cut
    live = proc.popen_ssh("jane+dev", "echo", "live-started;", "sleep", "300")
    assert live.stdout is not None
    assert "live-started" in await asyncio.to_thread(live.stdout.readline)
    async with chromium() as context:
        page = await context.new_page()  # type: ignore[attr-defined]
        await page.set_viewport_size(PHONE)
        await page.goto(f"{base}/vendor/login")
        await page.fill("#email", CONTACT)
        await page.click("button[type=submit]")
        await page.wait_for_selector("#sent")
        signin = await wait_for_mail(box, CONTACT, count=2)
        (login,) = re.findall(rf"{re.escape(base)}/vendor/login/\S+", signin)
        await page.goto(login)
        await page.click("#signin")
        await page.wait_for_url(f"{base}/vendor/")
        row = await page.inner_text("#tech-jane")
        assert "enabled" in row
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width} px)"
        await screenshot(page, "vendor-contact-phone")
        await page.click("#tech-jane button")
        await page.wait_for_selector("text=jane is disabled")
        staff = await page.goto(f"{base}/staff/vendors")
        assert "/staff/login" in page.url and staff.status == 200

    started = time.monotonic()
    await asyncio.to_thread(live.wait, 30)
    assert time.monotonic() - started < 30 and live.returncode != 0
    cut = proc.ssh("jane+dev", "echo", "hello-from-device")
    assert cut.code != 0 and "hello-from-device" not in cut.out
    kinds = [json.loads(line)["kind"] for line in proc.cli("audit", "export").out.splitlines()]
    for kind in ("vendor.invited", "invitation.used", "technician.pending",
                 "technician.approved", "vendor.login", "technician.disabled"):
        assert kind in kinds, kind
