"""Real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright.

``async with chromium() as browser:`` gives a browser with a fresh profile;
``screenshot(page, "name")`` keeps a PNG under ``test-artifacts/screenshots/`` (git-ignored)
for the closing notes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("BROKER_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "screenshots"
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 375, "height": 740}


def need_chromium() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")


@asynccontextmanager
async def chromium(extra_args: tuple[str, ...] = ()) -> AsyncIterator[object]:
    """A BrowserContext (fresh user-data dir) that accepts the broker's self-signed cert
    (``extra_args``: more Chromium flags, e.g. ``--host-resolver-rules=...``)."""
    need_chromium()
    from playwright.async_api import async_playwright

    profile = tempfile.mkdtemp(prefix="broker-chromium-")
    try:
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=[*FLAGS, *extra_args],
                ignore_https_errors=True, viewport={"width": 1200, "height": 800})
            try:
                yield context
            finally:
                await context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


async def screenshot(page: object, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    return path
