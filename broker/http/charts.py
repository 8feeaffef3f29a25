"""Charts as server-rendered SVG: no script, no CDN, readable at 375 px (they scale)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, tzinfo

from markupsafe import Markup, escape

from broker.domain.activity import DayActivity
from broker.services.activity import GrantLine

WIDTH, HEIGHT, PAD = 600, 170, 24


def activity_chart(days: Sequence[DayActivity]) -> Markup:
    """Sessions started per day (bars) and active grants per day (a line)."""
    if not days:
        return Markup("")
    top = max(1, *(d.sessions for d in days), *(d.active_grants for d in days))
    step = (WIDTH - 2 * PAD) / len(days)
    plot = HEIGHT - 2 * PAD

    def y(value: int) -> float:
        return HEIGHT - PAD - plot * value / top

    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
             f'aria-label="Sessions per day and active grants, last {len(days)} days">',
             f'<line class="axis" x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" '
             f'y2="{HEIGHT - PAD}"/>',
             f'<text class="label" x="{PAD - 4}" y="{y(top) + 4:.1f}" '
             f'text-anchor="end">{top}</text>']
    points = []
    for n, day in enumerate(days):
        x = PAD + n * step
        label = f"{day.day:%Y-%m-%d}: {day.sessions} sessions, {day.active_grants} active grants"
        parts.append(f'<rect class="bar" x="{x + 1:.1f}" y="{y(day.sessions):.1f}" '
                     f'width="{max(step - 2, 1):.1f}" height="{plot * day.sessions / top:.1f}">'
                     f"<title>{escape(label)}</title></rect>")
        points.append(f"{x + step / 2:.1f},{y(day.active_grants):.1f}")
    parts.append(f'<polyline class="grants" points="{" ".join(points)}"/>')
    for n in (0, len(days) - 1):
        anchor = "start" if n == 0 else "end"
        x = PAD if n == 0 else WIDTH - PAD
        parts.append(f'<text class="label" x="{x}" y="{HEIGHT - 6}" text-anchor="{anchor}">'
                     f"{days[n].day:%d %b}</text>")
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704  (numbers, dates and escape()d text only)


def grant_timeline(lines: Sequence[GrantLine], start: datetime, end: datetime,
                   zone: tzinfo) -> Markup:
    """One row per grant from its start to when access ended, its sessions as ticks."""
    if not lines:
        return Markup("")
    row, label_w = 26, 130
    span = max((end - start).total_seconds(), 1.0)
    height = row * len(lines) + PAD

    def x(moment: datetime) -> float:
        offset = min(max((moment - start).total_seconds(), 0.0), span)
        return label_w + (WIDTH - label_w - 8) * offset / span

    parts = [f'<svg class="chart timeline" viewBox="0 0 {WIDTH} {height}" role="img" '
             f'aria-label="Grants and sessions on this device">']
    for n, line in enumerate(lines):
        g, top = line.grant, n * row + 4
        began = g.start if g.start.tzinfo else g.start.replace(tzinfo=UTC)
        x0, x1 = x(began), x(line.ends_at)
        title = (f"grant {g.id}: {line.technician} ({line.vendor}), "
                 f"{began.astimezone(zone):%Y-%m-%d %H:%M} to "
                 f"{line.ends_at.astimezone(zone):%Y-%m-%d %H:%M}, {line.how_it_ended}")
        parts.append(f'<text class="label" x="0" y="{top + 14}">{escape(line.technician[:16])}'
                     f"</text>")
        parts.append(f'<rect class="grant state-{escape(g.state)}" x="{x0:.1f}" y="{top}" '
                     f'width="{max(x1 - x0, 2):.1f}" height="{row - 10}" rx="3">'
                     f"<title>{escape(title)}</title></rect>")
        for s in line.sessions:
            sx0 = x(s.started_at)
            sx1 = x(s.ended_at) if s.ended_at else x(end)
            parts.append(f'<rect class="session" x="{sx0:.1f}" y="{top + 4}" '
                         f'width="{max(sx1 - sx0, 2):.1f}" height="{row - 18}">'
                         f"<title>{escape(f'session {s.id}: {s.end_reason or s.state}')}"
                         f"</title></rect>")
    parts.append(f'<text class="label" x="{label_w}" y="{height - 4}">'
                 f"{start.astimezone(zone):%d %b}</text>")
    parts.append(f'<text class="label" x="{WIDTH - 8}" y="{height - 4}" text-anchor="end">'
                 f"{end.astimezone(zone):%d %b}</text></svg>")
    return Markup("".join(parts))  # noqa: S704  (numbers, dates and escape()d text only)
