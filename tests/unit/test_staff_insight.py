"""The dashboard's 30-day chart and the device page: who approved access, when it ends or
ended, how it was revoked, and a timeline of grants and sessions."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from broker.domain.activity import daily_activity, days_ending
from broker.services.grants import Grants
from broker.services.sessions import close_session
from tests.unit.staff_kit import add_staff, live_session, recording, sign_in, world
from tests.web_kit import portal

BERLIN = ZoneInfo("Europe/Berlin")


def test_daily_activity_counts_local_days_and_overlapping_windows() -> None:
    days = days_ending(date(2026, 3, 10), 3)
    assert days == [date(2026, 3, 8), date(2026, 3, 9), date(2026, 3, 10)]
    at = datetime(2026, 3, 8, 23, 30, tzinfo=UTC)  # 00:30 on the 9th in Berlin
    windows = [(datetime(2026, 3, 8, 10, tzinfo=UTC), datetime(2026, 3, 9, 12, tzinfo=UTC)),
               (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)),
               (datetime(2026, 3, 10, 22, 59, tzinfo=UTC), datetime(2026, 3, 12, tzinfo=UTC))]
    found = daily_activity(days, BERLIN, [at, at + timedelta(hours=20)], windows)
    assert [(d.sessions, d.active_grants) for d in found] == [(0, 1), (2, 1), (0, 1)]


async def test_dashboard_chart_and_the_device_page(broker_dir: Path, ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        ids = await world(ctx, ssh_pubkey)
        path = await recording(ctx, "s1", "hello")
        await live_session(ctx, "s1", ids["grant"], path.name)
        await close_session(ctx, "s1", "client closed the session")
        await Grants(ctx, "staff:audrey").revoke(ids["grant"], "vendor finished early")
        await add_staff(ctx, "aud", "admin")
        await sign_in(client, ctx, "aud")

        home = await (await client.get("/staff/")).text()
        assert '<svg class="chart"' in home and "1 sessions, 1 active grants" in home
        assert "sessions started per day (1 in all)" in home

        listing = await (await client.get("/staff/devices")).text()
        assert 'href="/staff/devices/pump-1"' in listing
        page = await (await client.get("/staff/devices/pump-1")).text()
        glance = page.split('id="at-a-glance"', 1)[1].split("</section>", 1)[0]
        assert "last time: grant" in glance and "bob (Acme Medical)" in glance
        assert '<dd id="approved-by">carol</dd>' in glance
        assert "Ended" in glance and "<time" in glance
        assert "revoked: vendor finished early" in glance
        assert '<svg class="chart timeline"' in page and "session s1: client closed" in page
        assert 'href="/staff/recordings/s1"' in page

        quiet = await (await client.get("/staff/devices/old-xray")).text()
        assert 'id="no-access"' in quiet
        missing = await client.get("/staff/devices/nope")
        assert missing.status == 404 and "no device &#39;nope&#39;" in await missing.text()
