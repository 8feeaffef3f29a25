"""Refusals on the HTTP side leave audit rows: API 401/403 (missing or bad token, a lower
role calling an admin operation), staff 401/403 (wrong role, bad CSRF), approval-link
refusals and every 429, all through the app's RefusalLog, so a flood from one address is a
bounded number of rows plus a ``refusal.suppressed`` count written at shutdown."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import web
from sqlmodel import col, select

from broker.config import load_config
from broker.http.api.auth import FAILED_AUTH, FailedAuth
from broker.http.app import REFUSAL_BURST
from broker.http.approvals import VIEW_LIMIT
from broker.http.ratelimit import RateLimit
from broker.services.context import Context
from broker.store.models import AuditEvent
from broker.testing import FakeClock
from tests.unit.api_kit import seed
from tests.unit.staff_kit import add_staff, sign_in
from tests.web_kit import portal


def _generous(app: web.Application) -> None:
    """Rate limits out of the way, so that each request below is a 401/403, not a 429."""
    app[FAILED_AUTH] = FailedAuth(per_minute=1_000_000, burst=1_000_000)
    app[VIEW_LIMIT] = RateLimit(per_minute=1_000_000, burst=1_000_000)


async def _rows(ctx: Context, *kinds: str) -> list[dict[str, Any]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(col(AuditEvent.kind).in_(kinds))
                              .order_by(col(AuditEvent.seq)))).all()
    return [{"kind": r.kind, "actor": r.actor, "subject": r.subject, **json.loads(r.data)}
            for r in rows]


async def test_api_401_and_403_are_audited(broker_dir: Path) -> None:
    async with portal(broker_dir, clock=FakeClock(), extend=_generous) as (client, ctx):
        s = await seed(ctx)
        calls = [
            ("GET", "/api/v1/grants", {}, 401),
            ("GET", "/api/v1/grants", {"Authorization": "Bearer vab_" + "A" * 43}, 401),
            ("GET", "/api/v1/grants", {"Authorization": "Basic dXNlcjpwYXNz"}, 401),
            ("POST", "/api/v1/requests", s.auth("auditor"), 403),  # role escalation
            ("POST", f"/api/v1/requests/{s.pending}/cancel", s.auth("approver"), 403),
            ("GET", "/api/v1/audit", s.auth("approver"), 403),
        ]
        for method, path, headers, status in calls:
            response = await client.request(method, path, headers=headers, json={})
            assert response.status == status, (path, await response.text())
        rows = await _rows(ctx, "api.refused")
        assert [(r["status"], r["reason"]) for r in rows] == [
            (401, "no bearer token"), (401, "bad token"), (401, "bad token"),
            (403, "role"), (403, "role"), (403, "role")]
        assert all(r["source"] == "127.0.0.1" for r in rows)
        assert rows[3]["actor"] == "api:ci-auditor" and rows[3]["role"] == "auditor"
        assert rows[3]["allowed"] == ["admin"] and rows[3]["path"] == "/api/v1/requests"
        assert rows[5]["subject"] == "api_token:carol-bot"
        assert not any("vab_" in json.dumps(r) for r in rows)  # no token ever logged


async def test_staff_403s_are_audited(broker_dir: Path) -> None:
    async with portal(broker_dir, clock=FakeClock()) as (client, ctx):
        s = await seed(ctx)
        await add_staff(ctx, "aud", "auditor")
        anonymous = await client.post(f"/staff/grants/{s.grant}/revoke", data={"csrf": "x"})
        assert anonymous.status == 401
        csrf = await sign_in(client, ctx, "aud")
        wrong_role = await client.post(f"/staff/grants/{s.grant}/revoke", data={"csrf": csrf})
        assert wrong_role.status == 403
        await client.post("/staff/logout", data={"csrf": csrf})
        await add_staff(ctx, "root", "admin")
        csrf = await sign_in(client, ctx, "root")
        bad_csrf = await client.post(f"/staff/grants/{s.grant}/revoke", data={"csrf": "0" * 64})
        assert bad_csrf.status == 403
        no_csrf = await client.post(f"/staff/grants/{s.grant}/revoke", data={})
        assert no_csrf.status == 403
        rows = await _rows(ctx, "staff.refused")
        assert [(r["actor"], r["status"], r["reason"]) for r in rows] == [
            ("anonymous", 401, "not signed in"), ("staff:aud", 403, "role"),
            ("staff:root", 403, "csrf token"), ("staff:root", 403, "csrf token")]
        assert rows[1]["permission"] == "revoke" and rows[1]["role"] == "auditor"
        assert (await client.post(f"/staff/grants/{s.grant}/revoke", allow_redirects=False,
                                  data={"csrf": csrf})).status == 303


async def test_a_flood_is_bounded_and_counted(broker_dir: Path) -> None:
    floods = {"api.refused": 150, "approval.refused": 120}
    async with portal(broker_dir, clock=FakeClock(), extend=_generous) as (client, ctx):
        await seed(ctx)
        before = len(await _rows(ctx, "api.refused", "approval.refused", "refusal.suppressed"))
        assert before == 0
        for n in range(floods["api.refused"]):
            response = await client.get("/api/v1/grants",
                                        headers={"Authorization": f"Bearer vab_guess{n}"})
            assert response.status == 401
        for n in range(floods["approval.refused"]):
            response = await client.get(f"/approve/not-a-token-{n}")
            assert response.status == 400
        during = await _rows(ctx, "api.refused", "approval.refused")
        assert [r["kind"] for r in during] == (["api.refused"] * REFUSAL_BURST
                                               + ["approval.refused"] * REFUSAL_BURST)
    # the app's cleanup wrote what was counted but not yet summarised
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    try:
        summaries = await _rows(ctx, "refusal.suppressed")
        counts = {r["refusal"]: r["count"] for r in summaries}
        assert counts == {kind: total - REFUSAL_BURST for kind, total in floods.items()}
        assert all(r["source"] == "127.0.0.1" for r in summaries)
    finally:
        await ctx.close()


async def test_429s_are_refusals_too(broker_dir: Path) -> None:
    async with portal(broker_dir, clock=FakeClock()) as (client, ctx):
        statuses = [(await client.get(f"/approve/junk-{n}")).status for n in range(25)]
        assert statuses[-1] == 429
        throttled = await _rows(ctx, "http.throttled")
        assert throttled and throttled[0]["path"].startswith("/approve/")
        assert throttled[0]["source"] == "127.0.0.1"
