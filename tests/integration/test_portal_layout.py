"""The portal reads on a 375-px phone and a 1280-px desk, in real Chromium: no table cell is
wider than the screen (wide tables scroll sideways inside their wrapper), IDs, times and
states are never broken mid-word, and the audit page shows event data as fields."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser_kit import chromium, screenshot
from tests.integration.harness import BrokerProcess, SshdDevice, wait_for_port

PASSWORD = "layout-staff-password-long"
PAGES = ("/staff/", "/staff/audit", "/staff/grants", "/staff/sessions", "/staff/devices",
         "/staff/recordings", "/staff/requests", "/staff/devices/dev", "/staff/vendors",
         "/staff/vendors/Acme%20Medical")

# Each cell's box, and every one-word cell whose text was laid out on more than one line.
MEASURE = """() => {
  const out = {wide: [], broken: []};
  for (const td of document.querySelectorAll('td')) {
    const box = td.getBoundingClientRect();
    if (box.width > window.innerWidth)
      out.wide.push([td.textContent.trim().slice(0, 40), box.width]);
    if (td.classList.contains('wrap')) continue;
    const walker = document.createTreeWalker(td, NodeFilter.SHOW_TEXT);
    while (walker.nextNode()) {
      const text = walker.currentNode.textContent.trim();
      if (!text || /\\s/.test(text)) continue;
      const range = document.createRange();
      range.selectNodeContents(walker.currentNode);
      const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
      if (lines.size > 1) out.broken.push(text);
    }
  }
  return out;
}"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice
           ) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.one_grant(sshd_device, "2h")
    proc.cli("device", "add", "infusion-pump-with-a-long-name-7", "--host", "127.0.0.1",
             "--user", "svc", "--password-env", "PW", "--purpose",
             "Volumetric infusion pump on ward 4B, serviced quarterly by the vendor",
             env={"PW": "x"})
    proc.cli("staff", "add", "pat", "--role", "admin", "--password-env", "STAFF_PW",
             env={"STAFF_PW": PASSWORD})
    proc.env["BROKER_BROKER_TIMEZONE"] = "Europe/Berlin"
    proc.serve()
    wait_for_port(proc.http_port, proc.proc)
    yield proc
    proc.stop()


async def _sign_in(page: Any, base: str) -> None:
    await page.goto(f"{base}/staff/login")
    await page.fill("#name", "pat")
    await page.fill("#password", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{base}/staff/")


@pytest.mark.parametrize("width", [375, 1280])
async def test_tables_fit_and_never_break_a_word(broker: BrokerProcess, width: int) -> None:
    base = f"https://127.0.0.1:{broker.http_port}"
    async with chromium() as context:
        page = await context.new_page()  # type: ignore[attr-defined]
        await page.set_viewport_size({"width": width, "height": 800})
        await _sign_in(page, base)
        for path in PAGES:
            response = await page.goto(base + path)
            assert response is not None and response.status == 200, path
            found = await page.evaluate(MEASURE)
            assert found["wide"] == [], (path, found["wide"])
            assert found["broken"] == [], (path, found["broken"])
            # nothing but a table's own scroller may be wider than the screen
            body = await page.evaluate("document.documentElement.scrollWidth")
            assert body <= width, (path, body)
            name = path.strip("/").replace("/", "-") or "staff"
            await screenshot(page, f"layout-{name}-{width}")
        icon = await page.get_attribute("link[rel=icon]", "href")
        assert icon is not None
        for path in (icon, "/favicon.ico"):
            fetched = await page.request.get(base + path)
            assert fetched.status == 200 and "<svg" in await fetched.text(), path
        await page.goto(f"{base}/staff/grants")
        shown = page.locator("table time").first
        assert (await shown.inner_text()).endswith((" CET", " CEST"))  # the hospital's zone
        assert (await shown.get_attribute("title") or "").endswith(" UTC")  # UTC on hover
        # serve said, on stderr, that no policy file restricts anything yet
        assert "warning: no policy files in" in broker.serve_log()
        await page.goto(f"{base}/staff/audit")
        fields = await page.locator("table.audit dl.data dt").all_inner_texts()
        assert "device" in fields  # device.added's data, as fields
        assert "{" not in await page.locator("table.audit dl.data dt").first.inner_text()
