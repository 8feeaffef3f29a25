"""Pages people would rather look at than read: the dashboard's 30-day chart and each
device's page (who approved access, when it ends or ended, how it was revoked, and a
timeline of its grants and sessions)."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

from aiohttp import web

from broker.http.charts import activity_chart, grant_timeline
from broker.http.keys import CONTEXT
from broker.http.staff.auth import requires
from broker.http.staff.firmware import firmware_card
from broker.http.staff.render import render
from broker.services.activity import HISTORY_DAYS, activity, device_history


async def chart_for_dashboard(request: web.Request) -> dict[str, object]:
    days = await activity(request.app[CONTEXT])
    return {"chart": activity_chart(days), "chart_days": len(days),
            "sessions_total": sum(d.sessions for d in days)}


@requires("devices")
async def device_page(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CONTEXT]
    name = request.match_info["name"]
    history = await device_history(ctx, name[:63])
    zone = ZoneInfo(ctx.config.settings.broker.timezone)
    now = ctx.now()
    timeline = grant_timeline(history.grants, now - timedelta(days=HISTORY_DAYS),
                              max([now, *(g.ends_at for g in history.grants)]), zone)
    return render(request, "device.html", {"history": history, "current": history.current,
                                           "timeline": timeline, "days": HISTORY_DAYS,
                                           **await firmware_card(request, history.device.name)})


def setup(app: web.Application) -> None:
    app.router.add_get("/staff/devices/{name}", device_page)
