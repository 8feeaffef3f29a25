"""The staff pages with real data: roles on every route, deciding, revoking, break-glass,
killing, recordings and the player, the audit log's verify state, devices, bad input."""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy import text
from sqlmodel import col, select

from broker.audit.checkpoints import sign_head
from broker.services.context import Context
from broker.services.grants import Grants
from broker.services.sessions import close_session
from broker.store.models import AccessRequest, Approval, AuditEvent, Grant, Session
from tests.unit.staff_kit import Client, add_staff, live_session, recording, sign_in, world
from tests.web_kit import portal


async def kinds(ctx: Context, prefix: str) -> list[tuple[str, str, str | None]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(col(AuditEvent.kind).startswith(prefix))
                              .order_by(col(AuditEvent.seq)))).all()
    return [(r.kind, r.actor, r.subject) for r in rows]


async def status(client: Client, path: str) -> int:
    return (await client.get(path, allow_redirects=False)).status


async def test_each_role_reaches_only_its_pages(broker_dir: Path, ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        ids = await world(ctx, ssh_pubkey)
        await recording(ctx, "rec1", "hello")
        for name, role, approver in (("appr", "approver", "alice"), ("aud", "auditor", None),
                                     ("adm", "admin", "carol")):
            await add_staff(ctx, name, role, approver)
        anonymous = await client.get("/staff/recordings", allow_redirects=False)
        assert anonymous.status == 303
        assert anonymous.headers["Location"] == "/staff/login?next=/staff/recordings"
        assert (await client.post(f"/staff/grants/{ids['grant']}/revoke")).status == 401
        pages = ["/staff/", "/staff/requests", "/staff/grants", "/staff/breakglass",
                 "/staff/sessions", "/staff/recordings", "/staff/recordings/rec1",
                 "/staff/recordings/rec1/files/term-0.cast", "/staff/audit", "/staff/devices"]
        seen: dict[str, list[int]] = {}
        for name in ("appr", "aud", "adm"):
            client.session.cookie_jar.clear()
            csrf = await sign_in(client, ctx, name)
            seen[name] = [await status(client, page) for page in pages]
            revoke = await client.post(f"/staff/grants/{ids['grant']}/revoke",
                                       data={"csrf": csrf}, allow_redirects=False)
            seen[name].append(revoke.status)
            home = await (await client.get("/staff/")).text()
            seen[name].append(int("/staff/recordings" in home))
        #                dash req grants bg  sess rec play file audit dev | revoke menu:rec
        assert seen["appr"] == [200, 200, 200, 200, 403, 403, 403, 403, 403, 403, 403, 0]
        assert seen["aud"] == [200, 200, 200, 403, 200, 200, 200, 200, 200, 200, 403, 1]
        assert seen["adm"] == [200, 200, 200, 200, 200, 200, 200, 200, 200, 200, 303, 1]
        grant = await Grants(ctx, "test").show(ids["grant"])
        assert grant.grant.state == "revoked"  # by the admin only


async def test_an_approver_decides_from_the_requests_page(broker_dir: Path,
                                                          ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        ids = await world(ctx, ssh_pubkey)
        await add_staff(ctx, "appr", "approver", "alice")
        csrf = await sign_in(client, ctx, "appr")
        page = await (await client.get("/staff/requests")).text()
        assert "replace the battery" in page and f"/staff/requests/{ids['pending']}/decide" in page
        assert "<dd>1h ·" in page and " min ·" not in page  # one duration format everywhere
        for bad in ({"decision": "approve"}, {"decision": "approve", "csrf": "0" * 64}):
            refused = await client.post(f"/staff/requests/{ids['pending']}/decide", data=bad,
                                        allow_redirects=False)
            assert refused.status == 403
        odd = await client.post(f"/staff/requests/{ids['pending']}/decide",
                                data={"decision": "maybe", "csrf": csrf})
        assert odd.status == 400 and "decision: expected approve or deny" in await odd.text()
        done = await client.post(f"/staff/requests/{ids['pending']}/decide",
                                 data={"decision": "approve", "comment": "ok from ICU",
                                       "csrf": csrf}, allow_redirects=False)
        assert done.status == 303
        shown = await (await client.get(done.headers["Location"])).text()
        assert f"You approved request {ids['pending']}." in shown
        twice = await client.post(f"/staff/requests/{ids['pending']}/decide",
                                  data={"decision": "deny", "csrf": csrf})
        assert twice.status == 409 and "is approved: there is nothing to decide" \
            in await twice.text()
        async with ctx.store.session() as db:
            request = await db.get(AccessRequest, ids["pending"])
            approval = (await db.exec(select(Approval).where(
                Approval.request_id == ids["pending"]))).one()
        assert request is not None and request.state == "approved"
        assert (approval.via, approval.comment) == ("web", "ok from ICU")
        assert ("request.approved", "approver:alice", f"request:{ids['pending']}") in \
            await kinds(ctx, "request.")


async def test_an_admin_revokes_a_grant_with_the_button(broker_dir: Path,
                                                        ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        ids = await world(ctx, ssh_pubkey)
        await add_staff(ctx, "adm", "admin")
        csrf = await sign_in(client, ctx, "adm")
        page = await (await client.get("/staff/grants?filter=active")).text()
        assert f'action="/staff/grants/{ids["grant"]}/revoke"' in page and "Revoke" in page
        response = await client.post(f"/staff/grants/{ids['grant']}/revoke",
                                     data={"csrf": csrf, "reason": "vendor left early"},
                                     allow_redirects=False)
        assert response.status == 303
        after = await (await client.get(response.headers["Location"])).text()
        assert f"Grant {ids['grant']} was revoked" in after and "vendor left early" in after
        assert f'action="/staff/grants/{ids["grant"]}/revoke"' not in after
        grant = (await Grants(ctx, "test").show(ids["grant"])).grant
        assert (grant.state, grant.revoke_reason) == ("revoked", "vendor left early")
        assert ("grant.revoked", "staff:adm", f"grant:{ids['grant']}") in \
            await kinds(ctx, "grant.revoked")
        again = await client.post(f"/staff/grants/{ids['grant']}/revoke", data={"csrf": csrf})
        assert again.status == 409
        missing = await client.post("/staff/grants/999/revoke", data={"csrf": csrf})
        assert missing.status == 404 and "no grant with id 999" in await missing.text()


async def test_break_glass_is_opened_by_an_admin_and_reviewed_by_an_approver(
        broker_dir: Path, ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        await world(ctx, ssh_pubkey)
        await add_staff(ctx, "adm", "admin")
        await add_staff(ctx, "appr", "approver", "alice")
        csrf = await sign_in(client, ctx, "adm")
        bad = await client.post("/staff/breakglass", data={
            "csrf": csrf, "technician": "bob", "device": "pump-1", "duration": "soon",
            "reason": "pump alarms in ICU"})
        assert bad.status == 400 and "duration:" in await bad.text()
        opened = await client.post("/staff/breakglass", allow_redirects=False, data={
            "csrf": csrf, "technician": "bob", "device": "pump-1", "duration": "30m",
            "reason": "pump alarms in ICU bed 4"})
        assert opened.status == 303, await opened.text()
        grant_id = int(re.search(r"id=(\d+)", opened.headers["Location"]).group(1))  # type: ignore[union-attr]
        client.session.cookie_jar.clear()
        csrf = await sign_in(client, ctx, "appr")
        page = await (await client.get("/staff/breakglass")).text()
        assert "pump alarms in ICU bed 4" in page and "staff:adm" in page
        assert "Open a break-glass grant" not in page  # approvers don't open them
        assert (await client.post("/staff/breakglass", data={
            "csrf": csrf, "technician": "bob", "device": "pump-1", "duration": "30m",
            "reason": "x y z"})).status == 403
        reviewed = await client.post(f"/staff/grants/{grant_id}/review", allow_redirects=False,
                                     data={"csrf": csrf, "comment": "justified, checked logs"})
        assert reviewed.status == 303
        after = await (await client.get("/staff/breakglass")).text()
        assert "every break-glass grant has been reviewed" in after
        async with ctx.store.session() as db:
            grant = await db.get(Grant, grant_id)
        assert grant is not None and grant.reviewed_by == "alice"


async def test_kill_asks_the_holding_node_to_cut_the_session(broker_dir: Path,
                                                             ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        ids = await world(ctx, ssh_pubkey)
        path = await recording(ctx, "s1", "live output", live=True)
        await live_session(ctx, "s1", ids["grant"], path.name)
        await add_staff(ctx, "aud", "auditor")
        csrf = await sign_in(client, ctx, "aud")
        page = await (await client.get("/staff/sessions")).text()
        assert 'id="session-s1"' in page and "/staff/sessions/s1/watch" in page
        assert "node-x" in page and "bob" in page and "pump-1" in page
        assert (await client.post("/staff/sessions/s1/kill", data={})).status == 403
        killed = await client.post("/staff/sessions/s1/kill", allow_redirects=False,
                                   data={"csrf": csrf, "reason": "unexpected commands"})
        assert killed.status == 303
        ending = await (await client.get("/staff/sessions")).text()
        assert "ending: hospital security ended this session" in ending
        assert "/staff/sessions/s1/watch" not in ending and ">Kill<" not in ending
        async with ctx.store.session() as db:
            row = await db.get(Session, "s1")
        assert row is not None
        assert row.kill_reason == "hospital security ended this session: unexpected commands"
        assert ("session.kill_requested", "staff:aud", "session:s1") in \
            await kinds(ctx, "session.kill")
        await close_session(ctx, "s1", "killed")
        ended = await client.post("/staff/sessions/s1/kill", data={"csrf": csrf})
        assert ended.status == 409 and "is not live" in await ended.text()
        assert (await client.post("/staff/sessions/nope/kill", data={"csrf": csrf})
                ).status == 404


async def test_recordings_search_player_and_integrity(broker_dir: Path,
                                                      ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        await world(ctx, ssh_pubkey)
        first = await recording(ctx, "rec-a", "alpha-marker")
        await recording(ctx, "rec-b", "bravo-marker")
        await add_staff(ctx, "aud", "auditor")
        await sign_in(client, ctx, "aud")
        listing = await (await client.get("/staff/recordings")).text()
        assert listing.index("rec-b") < listing.index("rec-a")  # newest first
        found = await (await client.get("/staff/recordings?q=ALPHA-marker")).text()
        assert "/staff/recordings/rec-a?file=term-0.cast" in found and "rec-b" not in found
        none = await (await client.get("/staff/recordings?q=zulu")).text()
        assert "No recording contains that text" in none
        player = await client.get("/staff/recordings/rec-a")
        html = await player.text()
        assert 'data-cast="/staff/recordings/rec-a/files/term-0.cast"' in html
        assert "/static/vendor/asciinema-player.min.js" in html and "<script>" not in html
        assert "ok: signature and every file" in html
        assert "'wasm-unsafe-eval'" in player.headers["Content-Security-Policy"]
        assert "'unsafe-inline'" not in player.headers["Content-Security-Policy"]
        cast = await client.get("/staff/recordings/rec-a/files/term-0.cast")
        assert cast.status == 200 and "alpha-marker" in await cast.text()
        for bad in ("/staff/recordings/rec-a/files/..%2Fsession.json",
                    "/staff/recordings/rec-a/files/.seal.lock",
                    "/staff/recordings/rec-a/files/nope.cast",
                    "/staff/recordings/..%2F..%2Fetc/files/passwd",
                    "/staff/recordings/zzz"):
            assert (await client.get(bad)).status == 404, bad
        data = bytearray((first / "term-0.cast").read_bytes())
        data[-3] ^= 0x01
        (first / "term-0.cast").write_bytes(bytes(data))
        tampered = await (await client.get("/staff/recordings/rec-a")).text()
        assert "file term-0.cast was changed" in tampered
        assert ("recording.viewed", "staff:aud", "session:rec-a") in \
            await kinds(ctx, "recording.")


async def test_audit_page_shows_the_chain_state_and_pages(broker_dir: Path,
                                                          ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        await world(ctx, ssh_pubkey)
        await add_staff(ctx, "aud", "auditor")
        await sign_in(client, ctx, "aud")
        await sign_head(ctx)  # as the broker process that wrote the rows does
        page = await (await client.get("/staff/audit")).text()
        assert "Chain intact" in page and "staff.login_succeeded" in page
        assert "rel=\"next\"" not in page
        only = await (await client.get("/staff/audit?kind=device.")).text()
        assert "device.retired" in only and "staff.login_succeeded" not in only
        none = await (await client.get("/staff/audit?kind=nothing.")).text()
        assert 'id="empty"' in none and "whose kind starts with “nothing.”" in none
        grants = await (await client.get("/staff/grants?filter=unreviewed")).text()
        assert "No grants match the filter “unreviewed”" in grants
        async with ctx.store.session() as db:
            for n in range(60):
                await ctx.audit(db, "test.filler", "test", f"row-{n}")
        first = await (await client.get("/staff/audit")).text()
        assert 'rel="next"' in first and "page 1 of 2" in first
        second = await (await client.get("/staff/audit?page=2")).text()
        assert "page 2 of 2" in second and "approver.added" in second
        async with ctx.store.session() as db:
            await db.exec(text("UPDATE audit_event SET actor = 'mallory' WHERE seq = 3"))  # type: ignore[call-overload]
        broken = await (await client.get("/staff/audit")).text()
        assert "Chain broken" in broken and "audit row 3: was changed after it was written" \
            in broken


async def test_devices_show_their_lifecycle_state(broker_dir: Path, ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        await world(ctx, ssh_pubkey)
        await add_staff(ctx, "aud", "auditor")
        await sign_in(client, ctx, "aud")
        page = await (await client.get("/staff/devices")).text()
        assert re.search(r'id="device-old-xray">.*?state-retired">retired', page, re.S)
        assert re.search(r'id="device-pump-1">.*?state-active">active', page, re.S)
        retired = await (await client.get("/staff/devices?state=retired")).text()
        assert "old-xray" in retired and "device-pump-1" not in retired
        dash = await (await client.get("/staff/")).text()
        assert 'id="count-pending">1<' in dash and 'id="count-active">1<' in dash


async def test_bad_query_input_is_one_clear_line(broker_dir: Path, ssh_pubkey: Path) -> None:
    async with portal(broker_dir) as (client, ctx):
        await add_staff(ctx, "adm", "admin")
        await sign_in(client, ctx, "adm")
        for path, message in (("/staff/requests?state=bogus", "state: expected one of"),
                              ("/staff/grants?filter=x", "filter: expected one of"),
                              ("/staff/audit?page=abc", "page: expected a positive whole"),
                              ("/staff/devices?state=broken", "state: expected active"),
                              ("/staff/recordings?q=" + "x" * 300, "q: at most 200")):
            response = await client.get(path)
            assert response.status == 400, path
            assert message in await response.text(), path
        assert (await client.get("/staff/recordings/rec-x?t=soon")).status == 404
