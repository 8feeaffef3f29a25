"""The vendor self-service pages over a real app, real SQLite and a real aiosmtpd server:
the technician's onboarding page, the vendor contact's e-mailed sign-in and scoped page
(attacked: another vendor's technician, id swapping, forged cookies, missing CSRF, staff
pages), and the staff vendor pages by role."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import FormData
from sqlmodel import col, select

from broker.services.context import Context
from broker.services.directory import Directory, parse_public_keys
from broker.services.invitations import Invitations
from broker.services.vendors import Vendors
from broker.store.models import AuditEvent, Technician
from broker.testing import FakeClock
from tests.approval_kit import Mailbox, smtp_server
from tests.onboard_kit import (
    CONTACT,
    OTHER,
    OTHER_CONTACT,
    VENDOR,
    last_to,
    link_in,
    public_key,
    use_smtp,
    vendors,
)
from tests.unit.staff_kit import Client, add_staff, csrf_of, sign_in
from tests.web_kit import portal


@pytest.fixture
def smtp(broker_dir: Path) -> Iterator[Mailbox]:
    with smtp_server() as (mailbox, port):
        use_smtp(broker_dir, port)
        yield mailbox


async def events(ctx: Context, kind: str) -> list[tuple[str, str | None, dict[str, object]]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(AuditEvent.kind == kind)
                              .order_by(col(AuditEvent.seq)))).all()
    return [(r.actor, r.subject, json.loads(r.data)) for r in rows]


async def tech(ctx: Context, name: str) -> Technician:
    async with ctx.store.session() as db:
        return (await db.exec(select(Technician).where(Technician.name == name))).one()


async def invite(ctx: Context, mailbox: Mailbox, email: str = "jane@acme.example",
                 name: str | None = "jane") -> str:
    await Invitations(ctx, "cli:admin").invite(VENDOR, email, name)
    return link_in(last_to(mailbox, email), "/onboard/")


# -- the technician's page ---------------------------------------------------------------------
async def test_onboarding_page(broker_dir: Path, smtp: Mailbox) -> None:
    async with portal(broker_dir) as (client, ctx):
        await vendors(ctx)
        path = await invite(ctx, smtp)
        page = await client.get(path)
        html = await page.text()
        assert page.status == 200 and VENDOR in html and 'value="jane"' in html
        assert 'name="viewport"' in html and page.headers["Cache-Control"] == "no-store"
        csrf = csrf_of(html)
        # no CSRF token: refused, audited, link still good
        assert (await client.post(path, data={"name": "jane", "key": public_key()})).status \
            == 403
        # a bad key: the form again, one line, link still good
        bad = await client.post(path, data={"csrf": csrf, "name": "jane",
                                            "key": public_key("ssh-rsa", key_size=2048)})
        text = await bad.text()
        assert bad.status == 400 and "at least 3072" in text and 'value="jane"' in text
        assert "Traceback" not in text
        # uploaded .pub file (multipart)
        form = FormData()
        form.add_field("csrf", csrf)
        form.add_field("name", "jane-doe")
        form.add_field("key", "")
        form.add_field("keyfile", public_key().encode() + b"\n", filename="id_ed25519.pub",
                       content_type="application/octet-stream")
        done = await client.post(path, data=form)
        assert done.status == 200, await done.text()
        assert "pending approval" in await done.text()
        assert (await tech(ctx, "jane-doe")).disabled
        used = await client.get(path)
        assert used.status == 409 and "already been used" in await used.text()
        token = path.removeprefix("/onboard/")
        tampered = await client.get("/onboard/" + token[:-1] + ("0" if token[-1] != "0"
                                                                  else "1"))
        assert tampered.status == 403 and "not valid" in await tampered.text()
        assert (await client.get("/onboard/nonsense")).status == 400
        reasons = [d["reason"] for _, _, d in await events(ctx, "invitation.refused")]
        assert reasons == ["csrf token", "used", "tampered", "malformed"]
        assert [a for a, _, _ in await events(ctx, "technician.pending")] == [
            "invitee:jane@acme.example"]


async def test_onboarding_page_expired_and_oversized(broker_dir: Path, smtp: Mailbox) -> None:
    clock = FakeClock()
    async with portal(broker_dir, clock=clock) as (client, ctx):
        await vendors(ctx)
        path = await invite(ctx, smtp)
        csrf = csrf_of(await (await client.get(path)).text())
        form = FormData()
        form.add_field("csrf", csrf)
        form.add_field("name", "jane")
        form.add_field("keyfile", b"x" * 20000, filename="big.pub")
        big = await client.post(path, data=form)
        assert big.status == 400 and "larger than" in await big.text()
        clock.advance(timedelta(days=7))
        gone = await client.post(path, data={"csrf": csrf, "name": "jane",
                                             "key": public_key()})
        assert gone.status == 410 and "expired" in await gone.text()


# -- the vendor contact ----------------------------------------------------------------------
async def contact_sign_in(client: Client, mailbox: Mailbox, address: str = CONTACT) -> str:
    """Ask for a link, spend it; return the vendor page's CSRF token."""
    page = await client.get("/vendor/login")
    asked = await client.post("/vendor/login", data={"csrf": csrf_of(await page.text()),
                                                     "email": address})
    assert asked.status == 200 and "on its way" in await asked.text()
    path = link_in(last_to(mailbox, address), "/vendor/login/")
    button = await client.get(path)
    signed = await client.post(path, data={"csrf": csrf_of(await button.text())},
                               allow_redirects=False)
    assert signed.status == 303 and signed.headers["Location"] == "/vendor/"
    home = await client.get("/vendor/")
    assert home.status == 200
    return csrf_of(await home.text())


async def two_vendors_with_techs(ctx: Context, pubkey: str) -> None:
    await vendors(ctx)
    directory = Directory(ctx, "test")
    keys = parse_public_keys(pubkey, "key")
    await directory.add_technician("alice", VENDOR, keys, "alice@acme.example")
    await directory.add_technician("victim", OTHER, keys, "v@imaging.example")


async def test_vendor_contact_sees_and_disables_only_its_own(broker_dir: Path,
                                                            smtp: Mailbox) -> None:
    async with portal(broker_dir) as (client, ctx):
        await two_vendors_with_techs(ctx, public_key())
        path = await invite(ctx, smtp, "newbie@acme.example", "newbie")
        csrf_page = csrf_of(await (await client.get(path)).text())
        await client.post(path, data={"csrf": csrf_page, "name": "newbie",
                                      "key": public_key()})
        csrf = await contact_sign_in(client, smtp)
        home = await (await client.get("/vendor/")).text()
        assert "alice" in home and "newbie" in home and "pending" in home
        assert "victim" not in home and OTHER not in home

        # attacker moves: another vendor's technician, an unknown one, no CSRF, wrong CSRF
        other = await client.post("/vendor/technicians/victim/disable", data={"csrf": csrf})
        assert other.status == 404
        assert "has no technician named &#39;victim&#39;" in await other.text()
        unknown = await client.post("/vendor/technicians/nobody/disable", data={"csrf": csrf})
        assert unknown.status == 404
        assert (await client.post("/vendor/technicians/alice/disable")).status == 403
        assert (await client.post("/vendor/technicians/alice/disable",
                                  data={"csrf": "0" * 64})).status == 403
        cross = await client.post("/vendor/technicians/alice/disable", data={"csrf": csrf},
                                  headers={"Origin": "https://evil.example"})
        assert cross.status == 403  # another site's page, even with the right token
        assert not (await tech(ctx, "victim")).disabled
        assert not (await tech(ctx, "alice")).disabled
        refused = await events(ctx, "vendor.contact_refused")
        assert [(d["technician"], d["reason"]) for _, _, d in refused] == [
            ("victim", "not this vendor's technician"), ("nobody", "no such name")]
        # the vendor cookie opens no staff page
        for page in ("/staff/", "/staff/vendors", f"/staff/vendors/{VENDOR}"):
            assert (await client.get(page, allow_redirects=False)).status == 303
        assert (await client.post("/staff/technicians/newbie/approve",
                                  data={"csrf": csrf})).status == 401

        done = await client.post("/vendor/technicians/alice/disable", data={"csrf": csrf},
                                 allow_redirects=False)
        assert done.status == 303
        assert (await tech(ctx, "alice")).disabled
        assert (CONTACT, "alice") in [(a.removeprefix("vendor-contact:"), s)
                                      for a, s, _ in await events(ctx, "technician.disabled")]
        assert "is disabled" in await (await client.get(done.headers["Location"])).text()

        # sign out: the cookie is dead even if replayed
        cookie = {c.key: c.value for c in client.session.cookie_jar}["broker_vendor"]
        out = await client.post("/vendor/logout", data={"csrf": csrf}, allow_redirects=False)
        assert out.status == 303
        client.session.cookie_jar.update_cookies({"broker_vendor": cookie})
        assert (await client.get("/vendor/", allow_redirects=False)).status == 303


async def test_vendor_contact_links_and_sessions_refused(broker_dir: Path,
                                                         smtp: Mailbox) -> None:
    clock = FakeClock()
    async with portal(broker_dir, clock=clock) as (client, ctx):
        await two_vendors_with_techs(ctx, public_key())
        # not a contact: the same page, no mail, audited
        page = await client.get("/vendor/login")
        csrf = csrf_of(await page.text())
        same = await client.post("/vendor/login", data={"csrf": csrf,
                                                        "email": "alice@acme.example"})
        assert same.status == 200 and "on its way" in await same.text()
        assert smtp.messages == []
        assert [d["reason"] for _, _, d in await events(ctx, "vendor.login_refused")] == [
            "not an enabled vendor's contact"]
        assert (await client.post("/vendor/login", data={"email": CONTACT})).status == 403
        bad = await client.post("/vendor/login", data={"csrf": csrf, "email": "x"})
        assert bad.status == 400

        await contact_sign_in(client, smtp)
        path = link_in(last_to(smtp, CONTACT), "/vendor/login/")
        button = csrf_of(await (await client.get(path)).text())
        reused = await client.post(path, data={"csrf": button})
        assert reused.status == 409 and "already been used" in await reused.text()
        # forged cookies
        for forged in ("1.abc", "1", "x.y", "999.abcdef", "1." + "A" * 43):
            client.session.cookie_jar.clear()
            client.session.cookie_jar.update_cookies({"broker_vendor": forged})
            assert (await client.get("/vendor/", allow_redirects=False)).status == 303
        client.session.cookie_jar.clear()

        # a fresh link expires after 15 minutes
        csrf = csrf_of(await (await client.get("/vendor/login")).text())
        await client.post("/vendor/login", data={"csrf": csrf, "email": OTHER_CONTACT})
        late = link_in(last_to(smtp, OTHER_CONTACT), "/vendor/login/")
        clock.advance(timedelta(minutes=16))
        button = csrf_of(await (await client.get(late)).text())
        expired = await client.post(late, data={"csrf": button})
        assert expired.status == 410

        # the contact changes: the open session ends at once
        client.session.cookie_jar.clear()
        await contact_sign_in(client, smtp)
        await Vendors(ctx, "t").add("Spare", [], None, None)
        async with ctx.store.session() as db:
            from broker.store.models import Vendor
            acme = (await db.exec(select(Vendor).where(Vendor.name == VENDOR))).one()
            acme.contact = "new-boss@acme.example"
            db.add(acme)
        assert (await client.get("/vendor/", allow_redirects=False)).status == 303
        reasons = [d["reason"] for _, _, d in await events(ctx, "vendor.refused")]
        assert reasons == ["csrf token", "used", "expired"]


# -- staff vendor pages ------------------------------------------------------------------------
async def test_staff_vendor_pages_by_role(broker_dir: Path, smtp: Mailbox) -> None:
    async with portal(broker_dir) as (client, ctx):
        await two_vendors_with_techs(ctx, public_key())
        await Vendors(ctx, "t").set_contract(OTHER, ctx.now() + timedelta(days=10))
        await Vendors(ctx, "t").add("Gone Ltd", [], ctx.now() - timedelta(days=1), None)
        await add_staff(ctx, "adm", "admin")
        await add_staff(ctx, "aud", "auditor")
        await Directory(ctx, "t").add_approver("carol", "carol@hospital.example", [])
        await add_staff(ctx, "appr", "approver", "carol")

        csrf = await sign_in(client, ctx, "appr")
        assert (await client.get("/staff/vendors", allow_redirects=False)).status == 403
        client.session.cookie_jar.clear()

        csrf = await sign_in(client, ctx, "aud")
        listing = await (await client.get("/staff/vendors")).text()
        for state in ("active", "ending soon", "ended"):
            assert f">{state}<" in listing
        assert 'id="row-tech-alice">alice <span class="state state-enabled">enabled' in listing
        assert "never used" in listing
        page = await client.get(f"/staff/vendors/{VENDOR}")
        assert page.status == 200 and "Invite a technician" not in await page.text()
        refused = await client.post(f"/staff/vendors/{VENDOR}/invite",
                                    data={"csrf": csrf, "email": "x@acme.example"})
        assert refused.status == 403 and smtp.messages == []
        client.session.cookie_jar.clear()

        csrf = await sign_in(client, ctx, "adm")
        form = await (await client.get(f"/staff/vendors/{VENDOR}")).text()
        assert "Invite a technician" in form
        assert (await client.post(f"/staff/vendors/{VENDOR}/invite",
                                  data={"email": "x@acme.example"})).status == 403  # no CSRF
        wrong = await client.post(f"/staff/vendors/{VENDOR}/invite",
                                  data={"csrf": csrf, "email": "x@evil.example"})
        assert wrong.status == 403 and "not in vendor Acme Medical&#39;s domains" in \
            await wrong.text()
        sent = await client.post(f"/staff/vendors/{VENDOR}/invite",
                                 data={"csrf": csrf, "email": "x@acme.example", "name": "xav",
                                       "expires": "2d"})
        assert sent.status == 200 and "Invitation e-mailed to x@acme.example" in \
            await sent.text()
        path = link_in(last_to(smtp, "x@acme.example"), "/onboard/")
        token_csrf = csrf_of(await (await client.get(path)).text())
        await client.post(path, data={"csrf": token_csrf, "name": "xav", "key": public_key()})
        listing = await (await client.get("/staff/vendors")).text()
        assert "Technicians waiting for approval" in listing and "xav" in listing
        approved = await client.post("/staff/technicians/xav/approve", data={"csrf": csrf})
        assert approved.status == 200 and "xav is approved" in await approved.text()
        assert not (await tech(ctx, "xav")).disabled
        forged = await client.get(f"/staff/vendors/{VENDOR}?done=approved&who=mallory")
        assert "is approved" not in await forged.text()  # no notice about someone unknown
        again = await client.post("/staff/technicians/xav/reject", data={"csrf": csrf})
        assert again.status == 409 and "not awaiting approval" in await again.text()
        assert [a for a, _, _ in await events(ctx, "technician.approved")] == ["staff:adm"]

        await client.post(f"/staff/vendors/{VENDOR}/invite",
                          data={"csrf": csrf, "email": "w@acme.example"})
        unused = link_in(last_to(smtp, "w@acme.example"), "/onboard/")
        page = await (await client.get(f"/staff/vendors/{VENDOR}")).text()
        (ident,) = re.findall(r'action="/staff/invitations/(\d+)/withdraw"', page)  # the open one
        target = f"/staff/invitations/{ident}/withdraw"
        assert (await client.post(target, data={})).status == 403  # no CSRF
        gone = await client.post(target, data={"csrf": csrf})
        assert gone.status == 200 and ("The invitation to w@acme.example is withdrawn"
                                       in await gone.text())
        assert (await client.get(unused)).status == 403  # the link no longer works
        again = await client.post(target, data={"csrf": csrf})
        assert again.status == 409 and "is withdrawn, not open" in await again.text()
        assert (await client.post("/staff/invitations/x1/withdraw",
                                  data={"csrf": csrf})).status == 404
        client.session.cookie_jar.clear()
        csrf = await sign_in(client, ctx, "aud")
        assert "/withdraw" not in await (await client.get(f"/staff/vendors/{VENDOR}")).text()
        assert (await client.post(target, data={"csrf": csrf})).status == 403


# -- TOTP at onboarding, when a policy requires it ---------------------------------------------
TOTP_POLICY = """\
policies:
  - name: acme-with-totp
    vendors: ["Acme Medical"]
    require_totp: true
"""


async def test_onboarding_enrols_totp_when_a_policy_requires_it(broker_dir: Path,
                                                                 smtp: Mailbox) -> None:
    import pyotp

    (broker_dir / "policies" / "totp.yaml").write_text(TOTP_POLICY)
    async with portal(broker_dir) as (client, ctx):
        await vendors(ctx)
        path = await invite(ctx, smtp)
        csrf = csrf_of(await (await client.get(path)).text())
        assert (await client.post(path + "/totp", data={"csrf": csrf, "code": "123456"})
                ).status == 403  # not enrolled yet: the link is still open
        done = await client.post(path, data={"csrf": csrf, "name": "jane", "key": public_key()})
        html = await done.text()
        assert done.status == 200 and 'id="totp-qr"' in html and "data:image/svg+xml" in html
        secret = html.split('id="totp-secret">')[1].split("<")[0]
        assert len(secret) >= 16 and secret not in json.dumps(
            [d for _, _, d in await events(ctx, "technician.totp_enrolled")])
        wrong = await client.post(path + "/totp", data={"csrf": csrf, "code": "000000"})
        assert wrong.status == 400 and "not right" in await wrong.text()
        assert "totp-secret" not in await wrong.text()  # shown once only
        assert (await client.post(path + "/totp", data={"code": "1"})).status == 403
        code = pyotp.TOTP(secret).at(ctx.now())
        ok = await client.post(path + "/totp", data={"csrf": csrf, "code": code})
        assert ok.status == 200 and 'id="totp-ok"' in await ok.text()
        replay = await client.post(path + "/totp", data={"csrf": csrf, "code": code})
        assert replay.status == 400
        assert [d["reason"] for _, _, d in await events(ctx, "login.totp_failed")] == [
            "wrong code", "code already used"]
        assert len(await events(ctx, "technician.totp_confirmed")) == 1
        assert (await tech(ctx, "jane")).totp_secret is not None


async def test_no_totp_step_without_a_policy_requiring_it(broker_dir: Path,
                                                          smtp: Mailbox) -> None:
    (broker_dir / "policies" / "totp.yaml").write_text(TOTP_POLICY.replace(
        '"Acme Medical"', '"Imaging Co"'))
    async with portal(broker_dir) as (client, ctx):
        await vendors(ctx)
        path = await invite(ctx, smtp)
        csrf = csrf_of(await (await client.get(path)).text())
        done = await client.post(path, data={"csrf": csrf, "name": "jane", "key": public_key()})
        assert done.status == 200 and "totp" not in await done.text()
        assert (await tech(ctx, "jane")).totp_secret is None
