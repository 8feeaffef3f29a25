"""The approval pages behind a personal link, driven in-process over a real ``broker init``
directory: GET shows everything and changes nothing; POST decides once, CSRF-protected; every
refusal is a clear page with its own status and an audit event."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
from sqlmodel import col, func, select

from broker.approvals.tokens import mint, signing_key
from broker.http.keys import SECRET
from broker.http.security import csrf_token
from broker.store.models import AuditEvent, Grant, UsedApprovalToken
from broker.testing import FakeClock
from tests.approval_kit import (
    HOST_KEY_FINGERPRINT,
    events,
    file_request,
    link_for,
    request_state,
    staff_and_device,
    two_group_policy,
)
from tests.web_kit import portal

CSRF = re.compile(r'name="csrf" value="([0-9a-f]{64})"')


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found, "the page has no decision form"
    return found.group(1)


async def head_and_counts(ctx) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    async with ctx.store.session() as db:
        head = (await db.exec(select(func.max(col(AuditEvent.seq))))).one()
        grants = (await db.exec(select(func.count()).select_from(Grant))).one()
        used = (await db.exec(select(func.count()).select_from(UsedApprovalToken))).one()
    return head, grants, used


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def setup_two_groups(broker_dir: Path, ctx) -> int:  # type: ignore[no-untyped-def]
    two_group_policy(broker_dir)
    await staff_and_device(ctx)
    return await file_request(ctx)


async def test_get_shows_the_whole_request_and_changes_nothing(broker_dir: Path,
                                                               clock: FakeClock) -> None:
    async with portal(broker_dir, clock=clock) as (client, ctx):
        ident = await setup_two_groups(broker_dir, ctx)
        path, _ = link_for(ctx, ident, "bob")
        before = await head_and_counts(ctx)
        for _ in range(3):
            response = await client.get(path)
            assert response.status == 200
        page = await response.text()
        assert await head_and_counts(ctx) == before
        assert await request_state(ctx, ident) == "pending"
        for fact in ("Deciding as <strong>bob</strong>", "alice", "(BD)", "pump1",
                     "replace drug library 4.2", "1h", "Alaris 8015", "12.1.3", "ICU",
                     "infusion pumps, ward 4", HOST_KEY_FINGERPRINT, "biomed on-call",
                     "ssh", "sftp", "pumps-two-groups", "1 approval from group biomed",
                     "1 approval from group security", "Nobody has decided yet",
                     "Still needed: 1 more approval from group biomed; 1 more approval from"
                     " group security", 'value="approve"', 'value="deny"', "Comment"):
            assert fact in page, fact
        assert "<script" not in page and "style=" not in page
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Referrer-Policy"] == "no-referrer"
        csrf_of(page)


async def test_two_groups_grant_opens_only_on_the_last_approval(broker_dir: Path,
                                                                clock: FakeClock) -> None:
    async with portal(broker_dir, clock=clock) as (client, ctx):
        ident = await setup_two_groups(broker_dir, ctx)
        bob, _ = link_for(ctx, ident, "bob")
        page = await (await client.get(bob)).text()
        first = await client.post(bob, data={"csrf": csrf_of(page), "decision": "approve",
                                             "comment": "checked with ward 4"})
        assert first.status == 200
        text = await first.text()
        assert "Your approval of request" in text and "1 more approval from group security" in text
        assert await request_state(ctx, ident) == "pending"
        assert (await head_and_counts(ctx))[1] == 0

        carol, _ = link_for(ctx, ident, "carol")
        page = await (await client.get(carol)).text()
        assert "bob</strong> approved" in page and "checked with ward 4" in page
        assert "Still needed: 1 more approval from group security" in page
        clock.advance(timedelta(minutes=3))
        last = await client.post(carol, data={"csrf": csrf_of(page), "decision": "approve"})
        assert last.status == 200
        assert "You approved request" in await last.text()
        assert await request_state(ctx, ident) == "approved"
        async with ctx.store.session() as db:
            grant = (await db.exec(select(Grant))).one()
        assert grant.start == clock.now() and grant.end == clock.now() + timedelta(hours=1)
        kinds = [(k, d.get("via")) for k, _, d in await events(ctx)
                 if k.startswith("request.")]
        assert kinds[-3:] == [("request.approval", "link"), ("request.approval", "link"),
                              ("request.approved", None)]


async def test_deny_from_the_page(broker_dir: Path, clock: FakeClock) -> None:
    async with portal(broker_dir, clock=clock) as (client, ctx):
        ident = await setup_two_groups(broker_dir, ctx)
        path, _ = link_for(ctx, ident, "carol")
        page = await (await client.get(path)).text()
        response = await client.post(path, data={"csrf": csrf_of(page), "decision": "deny",
                                                 "comment": "not during the night shift"})
        assert response.status == 200 and "You denied request" in await response.text()
        assert await request_state(ctx, ident) == "denied"
        denied = await events(ctx, "request.denied")
        assert denied[-1][2]["comment"] == "not during the night shift"
        again = await client.get(link_for(ctx, ident, "bob")[0])
        assert "nothing to decide" in await again.text() and 'name="csrf"' not in (
            await again.text())


def forge(token: str, **changes: object) -> str:
    header, _payload, signature = token.split(".")
    body = jwt.decode(token, options={"verify_signature": False})
    body.update(changes)
    encoded = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{header}.{encoded}.{signature}"


async def test_tampered_links_are_refused_with_a_page_and_an_audit_event(
        broker_dir: Path, clock: FakeClock) -> None:
    async with portal(broker_dir, clock=clock) as (client, ctx):
        ident = await setup_two_groups(broker_dir, ctx)
        path, claims = link_for(ctx, ident, "bob")
        token = path.rsplit("/", 1)[1]
        header_none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=")
        wrong_key, _ = mint(b"w" * 32, "bob", ident, clock.now(), timedelta(hours=1))
        cases = {
            "alg none": (f"{header_none.decode()}.{token.split('.')[1]}.", 403,
                         "wrong algorithm", "not signed the way"),
            "wrong key": (wrong_key, 403, "bad signature", "signature does not match"),
            "approver swapped": (forge(token, sub="carol"), 403, "bad signature",
                                 "signature does not match"),
            "request swapped": (forge(token, req=ident + 1), 403, "bad signature",
                                "signature does not match"),
            "malformed": ("not-a-token", 400, "malformed", "damaged or incomplete"),
        }
        for name, (bad, status, reason, words) in cases.items():
            for method in ("get", "post"):
                before = len(await events(ctx, "approval.refused"))
                response = await getattr(client, method)(
                    f"/approve/{bad}", data={"csrf": "x", "decision": "approve"}
                    if method == "post" else None)
                assert response.status == status, (name, method)
                text = await response.text()
                assert words in text and "Traceback" not in text, (name, method)
                refused = await events(ctx, "approval.refused")
                assert len(refused) == before + 1, (name, method)
                assert refused[-1][2]["reason"] == reason, (name, method)
                assert refused[-1][2]["method"] == method.upper()
        swapped = (await events(ctx, "approval.refused"))[4]
        assert swapped[2]["claimed_sub"] == "carol"  # what the forger tried, for the record
        assert await request_state(ctx, ident) == "pending"

        clock.advance(claims.expires_at - clock.now())
        response = await client.get(path)
        assert response.status == 410 and "has expired" in await response.text()
        assert (await events(ctx, "approval.refused"))[-1][2]["reason"] == "expired"
        assert await request_state(ctx, ident) == "pending"


async def test_a_link_decides_once_replays_and_double_clicks_are_refused(
        broker_dir: Path, clock: FakeClock) -> None:
    async with portal(broker_dir, clock=clock) as (client, ctx):
        ident = await setup_two_groups(broker_dir, ctx)
        path, claims = link_for(ctx, ident, "bob")
        form = {"csrf": csrf_of(await (await client.get(path)).text()), "decision": "approve"}
        first, second = await asyncio.gather(client.post(path, data=form),
                                             client.post(path, data=form))
        statuses = sorted([first.status, second.status])
        assert statuses == [200, 409]
        loser = first if first.status == 409 else second
        assert "already been used" in await loser.text()
        replay = await client.post(path, data=form)
        assert replay.status == 409
        view = await client.get(path)
        assert view.status == 409
        reasons = [d["reason"] for _, _, d in await events(ctx, "approval.refused")]
        assert reasons == ["used", "used", "used"]
        assert [d["via"] for _, _, d in await events(ctx, "request.approval")] == ["link"]
        async with ctx.store.session() as db:
            spent = await db.get(UsedApprovalToken, claims.jti)
        assert spent is not None and spent.expires_at == claims.expires_at


async def test_csrf_missing_or_wrong_is_refused(broker_dir: Path, clock: FakeClock) -> None:
    async with portal(broker_dir, clock=clock) as (client, ctx):
        ident = await setup_two_groups(broker_dir, ctx)
        path, _ = link_for(ctx, ident, "bob")
        other, _ = link_for(ctx, ident, "bob")
        foreign = csrf_of(await (await client.get(other)).text())  # bound to another link
        for form in ({"decision": "approve"}, {"csrf": "", "decision": "approve"},
                     {"csrf": "0" * 64, "decision": "approve"},
                     {"csrf": foreign, "decision": "approve"}):
            response = await client.post(path, data=form)
            assert response.status == 403
            assert "valid security token" in await response.text()
        response = await client.post(path, json={"decision": "approve"})
        assert response.status == 403
        refused = await events(ctx, "approval.refused")
        assert [d["reason"] for _, _, d in refused] == ["csrf token"] * 5
        assert all(d["approver"] == "bob" for _, _, d in refused)
        assert await request_state(ctx, ident) == "pending"
        # the link still works after failed attempts: nothing was spent
        good = await client.post(path, data={"csrf": csrf_of(await (await client.get(path))
                                                              .text()), "decision": "approve"})
        assert good.status == 200


async def test_bad_form_values_are_one_line_400s(broker_dir: Path, clock: FakeClock) -> None:
    async with portal(broker_dir, clock=clock) as (client, ctx):
        ident = await setup_two_groups(broker_dir, ctx)
        path, _ = link_for(ctx, ident, "bob")
        csrf = csrf_of(await (await client.get(path)).text())
        for form, words in (({"csrf": csrf, "decision": "maybe"}, "must be approve or deny"),
                            ({"csrf": csrf}, "must be approve or deny"),
                            ({"csrf": csrf, "decision": "approve", "comment": "x" * 2001},
                             "longer than 2000")):
            response = await client.post(path, data=form)
            assert response.status == 400 and words in await response.text()
        assert await request_state(ctx, ident) == "pending"


async def test_requester_and_outsiders_cannot_decide(broker_dir: Path, clock: FakeClock) -> None:
    async with portal(broker_dir, clock=clock) as (client, ctx):
        ident = await setup_two_groups(broker_dir, ctx)
        from broker.services.directory import Directory

        await Directory(ctx, "test").add_approver("alice", "a2@hospital.example", ["biomed"])
        cases = [("mallory", "reaches the mailbox of technician alice", True),
                 ("alice", "requested this access and cannot decide", True),
                 ("dave", "in none of the groups this request needs", False)]
        for approver, words, self_approval in cases:
            path, _ = link_for(ctx, ident, approver)
            view = await client.get(path)
            page = await view.text()
            assert view.status == 200 and words in page and 'name="csrf"' not in page
            for decision in ("approve", "deny"):
                # a valid CSRF token of this very link (the page offers no form to take it from)
                assert client.app is not None
                token_id = jwt.decode(path.rsplit("/", 1)[1],
                                      options={"verify_signature": False})["jti"]
                csrf = csrf_token(client.app, token_id)
                response = await client.post(path, data={"csrf": csrf, "decision": decision})
                assert response.status in (403, 409), (approver, decision)
                text = await response.text()
                assert words in text or "already been used" in text, (approver, decision)
            if self_approval:  # audited as such, with the service's message as the detail
                refused = [e for e in await events(ctx, "approval.refused")
                           if e[2]["reason"] == "self-approval"]
                assert refused[-1][2]["via"] == "link" and words in refused[-1][2]["detail"]
            else:
                refused = await events(ctx, "decision.refused")
                assert refused[-1][2]["via"] == "link" and words in refused[-1][2]["reason"]
        assert await request_state(ctx, ident) == "pending"


async def test_a_decision_on_an_expired_request_is_a_409(broker_dir: Path,
                                                          clock: FakeClock) -> None:
    from broker.config import load_config

    async with portal(broker_dir, clock=clock) as (client, ctx):
        ident = await setup_two_groups(broker_dir, ctx)
        clock.advance(timedelta(hours=23, minutes=59))
        path, _ = link_for(ctx, ident, "bob")
        csrf = csrf_of(await (await client.get(path)).text())
        clock.advance(timedelta(minutes=2))
        page = await (await client.get(path)).text()
        assert "This request is expired" in page and 'name="csrf"' not in page
        assert await request_state(ctx, ident) == "pending"  # the GET wrote nothing
        response = await client.post(path, data={"csrf": csrf, "decision": "approve"})
        assert response.status == 409 and "is expired" in await response.text()
        assert await request_state(ctx, ident) == "expired"
        assert load_config(broker_dir / "broker.toml").settings.approvals.link_ttl == "4h"


async def test_token_endpoints_are_rate_limited(broker_dir: Path, clock: FakeClock) -> None:
    async with portal(broker_dir, clock=clock) as (client, _ctx):
        statuses = [(await client.get("/approve/not-a-token")).status for _ in range(25)]
        assert statuses[0] == 400 and statuses[-1] == 429
        posts = [(await client.post("/approve/not-a-token")).status for _ in range(8)]
        assert posts[0] == 400 and posts[-1] == 429
        limited = await client.get("/approve/not-a-token")
        assert int(limited.headers["Retry-After"]) >= 1


async def test_the_web_key_signs_links_for_this_purpose_only(broker_dir: Path,
                                                             clock: FakeClock) -> None:
    async with portal(broker_dir, clock=clock) as (client, ctx):
        ident = await setup_two_groups(broker_dir, ctx)
        assert client.app is not None
        secret = client.app[SECRET]
        _, claims = link_for(ctx, ident, "bob")
        raw = jwt.encode({"iss": "vendor-access-broker", "aud": "approval-link", "sub": "bob",
                          "req": ident, "jti": "a" * 24, "iat": int(clock.now().timestamp()),
                          "exp": int(claims.expires_at.timestamp())}, secret, algorithm="HS256")
        assert (await client.get(f"/approve/{raw}")).status == 403
        good = jwt.encode({"iss": "vendor-access-broker", "aud": "approval-link", "sub": "bob",
                           "req": ident, "jti": "a" * 24, "iat": int(clock.now().timestamp()),
                           "exp": int(claims.expires_at.timestamp())}, signing_key(secret),
                          algorithm="HS256")
        assert (await client.get(f"/approve/{good}")).status == 200


def test_request_link_prints_a_fresh_audited_url(cli, broker_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from broker.config import load_config
    from broker.services.context import Context
    from broker.services.requests import Requests

    two_group_policy(broker_dir)

    async def prepare() -> int:
        ctx = Context.open(load_config(broker_dir / "broker.toml"))
        try:
            await staff_and_device(ctx)
            return await file_request(ctx)
        finally:
            await ctx.close()

    ident = asyncio.run(prepare())
    first, second, outsider, nobody, missing, bad = cli.many([
        ("request", "link", str(ident), "--approver", "bob"),
        ("request", "link", str(ident), "--approver", "bob", "--json"),
        ("request", "link", str(ident), "--approver", "dave"),
        ("request", "link", str(ident), "--approver", "zed"),
        ("request", "link", "999", "--approver", "bob"),
        ("request", "link", "x", "--approver", "bob"),
    ])
    assert first.code == 0 and second.code == 0, first.err + second.err
    url = first.out.strip()
    assert url.startswith("https://broker.test:8443/approve/") and "\n" not in url
    data = json.loads(second.out)
    assert data["approver"] == "bob" and data["request"] == ident
    assert data["url"] != url  # each call mints a fresh link
    token = url.rsplit("/", 1)[1]
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == "bob"
    assert outsider.code == 1 and "in none of the groups" in outsider.err
    assert nobody.code == 1 and "no approver named 'zed'" in nobody.err
    assert missing.code == 1 and "no request with id 999" in missing.err
    assert bad.code == 2
    for result in (outsider, nobody, missing, bad):
        assert len(result.err_lines) == 1 and "Traceback" not in result.err

    async def cancel_and_read() -> list[tuple[str, str | None, dict]]:
        ctx = Context.open(load_config(broker_dir / "broker.toml"))
        try:
            await Requests(ctx, "test").cancel(ident)
            return await events(ctx, "approval.link_issued")
        finally:
            await ctx.close()

    issued = asyncio.run(cancel_and_read())
    assert len(issued) == 2 and {d["via"] for _, _, d in issued} == {"cli"}
    assert all(d["approver"] == "bob" and s == f"request:{ident}" for _, s, d in issued)
    decided = cli("request", "link", str(ident), "--approver", "bob")
    assert decided.code == 1 and "is cancelled: there is nothing to decide" in decided.err


async def test_spent_link_ids_are_kept_until_their_link_expires(broker_dir: Path,
                                                                clock: FakeClock) -> None:
    from broker.approvals import links
    from broker.config import load_config
    from broker.services.context import Context

    ctx = Context.open(load_config(broker_dir / "broker.toml"), clock=clock)
    try:
        async with ctx.store.session() as db:
            for jti, hours in (("a" * 20, 1), ("b" * 20, 3)):
                db.add(UsedApprovalToken(jti=jti, request_id=1, approver="bob",
                                         used_at=clock.now(),
                                         expires_at=clock.now() + timedelta(hours=hours)))
        assert await links.purge_spent(ctx) == 0
        clock.advance(timedelta(hours=2))
        assert await links.purge_spent(ctx) == 1
        assert not await links.is_spent(ctx, "a" * 20) and await links.is_spent(ctx, "b" * 20)
    finally:
        await ctx.close()
