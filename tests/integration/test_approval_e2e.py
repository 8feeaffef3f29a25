"""End to end, all real: a technician files a request over `ssh`, the broker e-mails the
approver (a real aiosmtpd server), headless Chromium on a 375-px phone screen opens the link
from that e-mail and approves, and then a real `ssh` through the broker reaches the device."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.approval_kit import Mailbox, body_text, set_config, smtp_server
from tests.browser_kit import PHONE, chromium, need_chromium, screenshot
from tests.integration.harness import BrokerProcess, SshdDevice

pytestmark = pytest.mark.integration


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def broker_with_mail(tmp_path: Path, sshd_device: SshdDevice,
                     mailbox: tuple[Mailbox, int]) -> Iterator[BrokerProcess]:
    need_chromium()
    _box, port = mailbox
    proc = BrokerProcess(tmp_path / "broker").init()
    set_config(proc.root, "broker", public_url=f"https://127.0.0.1:{proc.http_port}")
    set_config(proc.root, "notify", smtp_host="127.0.0.1", smtp_port=port,
               mail_from="broker@hospital.example")
    proc.add_approver()
    proc.add_tech("tech")
    proc.add_sshd_device("dev", sshd_device)
    proc.serve()
    try:
        yield proc
    finally:
        proc.stop()


async def wait_for_mail(box: Mailbox, address: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = box.to(address)
        if found:
            return body_text(found[0])
        await asyncio.sleep(0.2)
    raise AssertionError(f"no mail to {address} within {timeout} s")


async def test_approver_approves_from_the_mailed_link_on_a_phone_then_ssh_gets_in(
        broker_with_mail: BrokerProcess, mailbox: tuple[Mailbox, int]) -> None:
    proc, (box, _port) = broker_with_mail, mailbox
    refused = proc.ssh("tech+dev", "echo", "hello-from-device")
    assert refused.code != 0 and "hello-from-device" not in refused.out

    # ssh joins its arguments into one command line, which the broker splits like a shell
    filed = proc.ssh("tech", "request", "dev", "--for", "1h", "--reason",
                     "'firmware 4.2 drug library update'")
    assert filed.code == 0, filed.err
    assert re.search(r"request \d+ filed", filed.out + filed.err)

    body = await wait_for_mail(box, "approver@hospital.example")
    (link,) = re.findall(rf"https://127\.0\.0\.1:{proc.http_port}/approve/\S+", body)
    assert "firmware 4.2 drug library update" in body

    async with chromium() as context:
        page = await context.new_page()  # type: ignore[attr-defined]
        await page.set_viewport_size(PHONE)
        response = await page.goto(link)
        assert response.status == 200
        text = await page.inner_text("main")
        for fact in ("Deciding as approver", "tech", "dev", "TestBox", "Biomed",
                     "firmware 4.2 drug library update", "1 approval from any approver"):
            assert fact in text, fact
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"the page scrolls sideways on a phone ({width} px)"
        approve = page.locator("button.approve")
        box_size = await approve.bounding_box()
        assert box_size is not None and box_size["height"] >= 44  # a thumb-sized target
        # the decision and both buttons are on the first screen of a phone
        deny = await page.locator("button.deny").bounding_box()
        assert deny is not None
        assert box_size["y"] + box_size["height"] <= PHONE["height"], box_size
        assert deny["y"] + deny["height"] <= PHONE["height"], deny
        first_screen = await page.inner_text("#decision")
        for fact in ("tech", "dev", "firmware 4.2 drug library update", "Access opens",
                     "Decide by"):
            assert fact in first_screen, fact
        await screenshot(page, "approval-phone-request")
        await page.fill("#comment", "ok for tonight, ward 4 informed")
        await approve.click()
        await page.wait_for_selector("text=You approved request")
        done = await page.inner_text("main")
        assert "Access is open from" in done and "ok for tonight" in done
        await screenshot(page, "approval-phone-approved")

        replay = await page.goto(link)  # the link is spent
        assert replay.status == 409
        used = await page.inner_text("main")
        assert "already been used" in used
        # what was decided, by whom, and where the grant stands, instead of a bare error
        assert "approver approved at" in used and "ok for tonight, ward 4 informed" in used
        assert "now active" in used
        await screenshot(page, "approval-phone-link-used")

    shown = proc.cli_json("request", "list")
    assert isinstance(shown, list) and shown[-1]["state"] == "approved"
    assert shown[-1]["decisions"][0]["via"] == "link"
    inside = proc.ssh("tech+dev", "echo", "hello-from-device")
    assert inside.code == 0, inside.err
    assert "hello-from-device" in inside.out
