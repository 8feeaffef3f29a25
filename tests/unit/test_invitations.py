"""Technician self-service onboarding: the pure link and key rules, and the service with a
real aiosmtpd server (invite, enrol, approve/reject) including every refusal: reuse, expiry,
tampering, a wrong domain, bad keys and names, a disabled vendor, no mail server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import col, select

from broker.config import load_config
from broker.domain import invitations as rules
from broker.domain.invitations import LinkRefused
from broker.errors import Conflict, NotFound, Refused, UsageError
from broker.services.context import Context
from broker.services.invitations import Invitations, fresh_token, web_secret
from broker.services.vendors import Vendors, account_refusal, enable_technician
from broker.store.models import AuditEvent, Invitation, Technician, TechnicianKey
from broker.testing import FakeClock
from tests.approval_kit import Mailbox, body_text, smtp_server
from tests.onboard_kit import (
    CONTACT,
    OTHER,
    VENDOR,
    last_to,
    link_in,
    public_key,
    use_smtp,
    vendors,
)

SECRET = b"k" * 32


# -- pure rules ----------------------------------------------------------------------------
def changed_end(text: str) -> str:
    """``text`` with its last character replaced by a different one (a fixed replacement
    would leave one token in 64 as it was)."""
    return text[:-1] + ("B" if text.endswith("A") else "A")


def test_a_token_is_bound_to_its_row_and_signed() -> None:
    minted = fresh_token(SECRET, rules.INVITE, 7)
    parsed = rules.parse_token(SECRET, rules.INVITE, minted.token)
    assert parsed.row_id == 7 and parsed.token_hash == minted.token_hash
    assert minted.token_hash not in minted.token  # only the hash is stored
    row, secret, mac = minted.token.split(".")
    for forged in (f"8.{secret}.{mac}", f"{row}.{changed_end(secret)}.{mac}",
                   f"{row}.{secret}.{'0' * 64}"):
        with pytest.raises(LinkRefused) as refused:
            rules.parse_token(SECRET, rules.INVITE, forged)
        assert refused.value.reason == rules.TAMPERED
    with pytest.raises(LinkRefused) as other_key:  # another broker's, or the other purpose
        rules.parse_token(b"x" * 32, rules.INVITE, minted.token)
    assert other_key.value.reason == rules.TAMPERED
    with pytest.raises(LinkRefused):
        rules.parse_token(SECRET, rules.VENDOR_LOGIN, minted.token)


@pytest.mark.parametrize("token", ["", "abc", "0.x.y", "1." + "a" * 43, "1..", "x" * 300,
                                   "1." + "a" * 43 + "." + "G" * 64, "-1.a.b"])
def test_malformed_tokens_are_one_reason(token: str) -> None:
    with pytest.raises(LinkRefused) as refused:
        rules.parse_token(SECRET, rules.INVITE, token)
    assert refused.value.reason == rules.MALFORMED


@pytest.mark.parametrize("algorithm, bits, ok", [
    ("ssh-ed25519", None, True), ("ecdsa-sha2-nistp256", None, True),
    ("ssh-rsa", 3072, True), ("ssh-rsa", 4096, True), ("ssh-rsa", 2048, False),
    ("ssh-dss", None, False), ("sk-ssh-ed25519@openssh.com", None, False)])
def test_key_kinds(algorithm: str, bits: int | None, ok: bool) -> None:
    assert (rules.key_refusal(algorithm, bits) is None) is ok


def test_minting_is_deterministic_given_the_nonce() -> None:
    nonce = "A" * 43
    assert rules.mint(SECRET, rules.INVITE, 3, nonce) == rules.mint(SECRET, rules.INVITE, 3,
                                                                     nonce)
    for bad in ("short", "A" * 42 + "!", "A" * 44):
        with pytest.raises(ValueError, match="nonce"):
            rules.mint(SECRET, rules.INVITE, 3, bad)
    with pytest.raises(ValueError, match="stored row"):
        rules.mint(SECRET, rules.INVITE, 0, nonce)


def test_small_rules() -> None:
    assert rules.suggested_name("Jane.Doe+x@acme.example") == "Jane.Doex"
    assert rules.suggested_name("__x@y") == "x"
    assert rules.state_of_contract(True, True, True) == "disabled"
    assert rules.state_of_contract(False, True, True) == "ended"
    assert rules.state_of_contract(False, False, True) == "ending soon"
    assert rules.state_of_contract(False, False, False) == "active"


# -- the service, with a real mail server ------------------------------------------------------
@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
async def world(broker_dir: Path, smtp: tuple[Mailbox, int]
                ) -> Iterator[tuple[Context, FakeClock, Mailbox]]:  # type: ignore[misc]
    mailbox, port = smtp
    use_smtp(broker_dir, port)
    clock = FakeClock()
    ctx = Context.open(load_config(broker_dir / "broker.toml"), clock=clock)
    await vendors(ctx)
    yield ctx, clock, mailbox
    await ctx.close()


async def kinds(ctx: Context) -> list[tuple[str, str, str | None, dict[str, object]]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))).all()
    return [(r.kind, r.actor, r.subject, json.loads(r.data)) for r in rows]


def token_of(mailbox: Mailbox, address: str) -> str:
    return link_in(last_to(mailbox, address), "/onboard/").removeprefix("/onboard/")


async def test_invite_enrol_approve(world: tuple[Context, FakeClock, Mailbox]) -> None:
    ctx, _, mailbox = world
    issued = await Invitations(ctx, "cli:admin").invite(VENDOR, "Jane@ACME.example", "jane")
    assert issued.invitation.state == "open"
    token = token_of(mailbox, "Jane@ACME.example")
    assert f"/onboard/{token}" == issued.url.split("8443")[-1] or token in issued.url
    async with ctx.store.session() as db:
        row = await db.get(Invitation, issued.invitation.id)
    assert row is not None and token not in row.token_hash and len(row.token_hash) == 64
    view = await Invitations(ctx, "link:x").open(token)
    assert view.vendor == VENDOR and view.invitation.name == "jane"

    tech = await Invitations(ctx, "link:x").complete(token, "jane-d", public_key())
    assert tech.disabled and tech.vendor == VENDOR and tech.email == "Jane@ACME.example"
    with pytest.raises(LinkRefused) as again:
        await Invitations(ctx, "link:x").complete(token, "jane-2", public_key())
    assert again.value.reason == rules.USED
    with pytest.raises(Refused, match="awaiting approval"):
        await enable_technician(ctx, "cli:admin", "jane-d")
    assert await account_refusal(ctx, "jane-d") == (
        "your technician account is waiting for the hospital's approval")
    assert [v.technician for v in await Invitations(ctx, "x").pending()] == ["jane-d"]

    decided = await Invitations(ctx, "staff:ann").decide("jane-d", True)
    assert decided.invitation.state == "approved" and decided.invitation.decided_by == "staff:ann"
    async with ctx.store.session() as db:
        stored = (await db.exec(select(Technician).where(Technician.name == "jane-d"))).one()
        keys = (await db.exec(select(TechnicianKey).where(
            TechnicianKey.technician_id == stored.id))).all()
    assert not stored.disabled and stored.enabled_at == ctx.now() and len(keys) == 1
    approved = last_to(mailbox, CONTACT)
    assert "jane-d" in str(approved["Subject"]) and "approved" in body_text(approved)
    assert mailbox.to("Jane@ACME.example")[-1]["Subject"] == approved["Subject"]
    with pytest.raises(Conflict, match="not awaiting approval"):
        await Invitations(ctx, "staff:ann").decide("jane-d", False)

    events = [(k, a, s) for k, a, s, _ in await kinds(ctx)]
    assert ("vendor.invited", "cli:admin", VENDOR) in events
    assert ("invitation.used", "invitee:Jane@ACME.example", VENDOR) in events
    assert ("technician.pending", "invitee:Jane@ACME.example", "jane-d") in events
    assert ("technician.approved", "staff:ann", "jane-d") in events
    assert all(token not in json.dumps(d) for _, _, _, d in await kinds(ctx))


async def test_reject_keeps_the_technician_disabled(
        world: tuple[Context, FakeClock, Mailbox]) -> None:
    ctx, _, mailbox = world
    await Invitations(ctx, "cli:admin").invite(VENDOR, "x@acme.example")
    await Invitations(ctx, "link").complete(token_of(mailbox, "x@acme.example"), "xavier",
                                            public_key("ecdsa-sha2-nistp256"))
    before = len(mailbox.messages)
    view = await Invitations(ctx, "cli:admin").decide("xavier", False)
    assert view.invitation.state == "rejected" and len(mailbox.messages) == before
    with pytest.raises(Refused, match="rejected"):
        await enable_technician(ctx, "cli:admin", "xavier")
    assert await account_refusal(ctx, "xavier") == "your technician account is disabled"
    assert ("technician.rejected", "cli:admin", "xavier") in [
        (k, a, s) for k, a, s, _ in await kinds(ctx)]


async def test_invitations_refused_up_front(world: tuple[Context, FakeClock, Mailbox],
                                            broker_dir: Path) -> None:
    ctx, _, mailbox = world
    service = Invitations(ctx, "cli:admin")
    with pytest.raises(Refused, match=r"--email mallory@evil\.example: not in vendor Acme"):
        await service.invite(VENDOR, "mallory@evil.example")
    with pytest.raises(Refused, match=r"--email .*not in vendor Acme"):
        await service.invite(VENDOR, "x@sub.acme.example")
    with pytest.raises(UsageError, match="--email"):
        await service.invite(VENDOR, "not an address")
    with pytest.raises(UsageError, match="--expires 40d: an invitation lives between"):
        await service.invite(VENDOR, "a@acme.example", expires="40d")
    with pytest.raises(UsageError, match="--expires"):
        await service.invite(VENDOR, "a@acme.example", expires="soon")
    with pytest.raises(UsageError, match="technician name"):
        await service.invite(VENDOR, "a@acme.example", name="bad name")
    await Vendors(ctx, "t").set_disabled(OTHER, True)
    with pytest.raises(Refused, match="is disabled"):
        await service.invite(OTHER, "a@imaging.example")
    assert mailbox.messages == []
    refused = [d["reason"] for k, _, _, d in await kinds(ctx) if k == "invitation.refused"]
    assert len(refused) == 3 and "not in vendor" in str(refused[0])


async def test_no_mail_server_no_invitation(broker_dir: Path) -> None:
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    try:
        await vendors(ctx)
        with pytest.raises(Refused, match=r"\[notify\] smtp_host is not set"):
            await Invitations(ctx, "cli:admin").invite(VENDOR, "a@acme.example")
        async with ctx.store.session() as db:
            assert (await db.exec(select(Invitation))).all() == []
    finally:
        await ctx.close()


async def test_an_unreachable_mail_server_leaves_no_usable_link(broker_dir: Path) -> None:
    from tests.integration.harness import free_port

    use_smtp(broker_dir, free_port())
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    try:
        await vendors(ctx)
        with pytest.raises(Refused, match=r"could not be e-mailed to a@acme\.example: SMTP"):
            await Invitations(ctx, "cli:admin").invite(VENDOR, "a@acme.example")
        views = await Invitations(ctx, "x").find(state="expired")
        assert len(views) == 1
        assert "invitation.mail_failed" in [k for k, *_ in await kinds(ctx)]
    finally:
        await ctx.close()


async def test_link_refusals(world: tuple[Context, FakeClock, Mailbox]) -> None:
    ctx, clock, mailbox = world
    service = Invitations(ctx, "cli:admin")
    await service.invite(VENDOR, "a@acme.example", expires="1h")
    token = token_of(mailbox, "a@acme.example")

    async def reason(text: str) -> str:
        with pytest.raises(LinkRefused) as refused:
            await service.open(text)
        return refused.value.reason

    row, secret, mac = token.split(".")
    assert await reason(f"{row}.{changed_end(secret)}.{mac}") == rules.TAMPERED
    # a well-signed token for a row that does not exist, or whose stored hash differs
    assert await reason(fresh_token(web_secret(ctx), rules.INVITE, 99).token) == rules.TAMPERED
    assert await reason(fresh_token(web_secret(ctx), rules.INVITE, int(row)).token) \
        == rules.TAMPERED
    assert await reason("garbage") == rules.MALFORMED

    # bad input leaves the link unspent
    for name, key, message in (
            ("bad name!", public_key(), "technician name"),
            ("ann", "ssh-rsa AAAA", "not an OpenSSH public key"),
            ("ann", public_key("ssh-rsa", key_size=2048), "2048 bits: at least 3072"),
            ("ann", public_key() + "\n" + public_key(), "exactly one key, not 2"),
            ("ann", "# only a comment", "holds no public key")):
        with pytest.raises(UsageError, match=message):
            await service.complete(token, name, key)
    await service.open(token)

    await Vendors(ctx, "t").add("Taken Co", [], None, None)
    from broker.services.directory import Directory
    await Directory(ctx, "t").add_technician("taken", "Taken Co", [])
    with pytest.raises(Conflict, match="'taken' is taken"):
        await service.complete(token, "taken", public_key())
    await service.open(token)

    async with ctx.store.session() as db:  # the vendor's domains change: the link stops
        from broker.store.models import Vendor
        vendor = (await db.exec(select(Vendor).where(Vendor.name == VENDOR))).one()
        vendor.domains = ["acme-new.example"]
        db.add(vendor)
    assert await reason(token) == rules.WRONG_DOMAIN
    async with ctx.store.session() as db:
        vendor = (await db.exec(select(Vendor).where(Vendor.name == VENDOR))).one()
        vendor.domains = ["acme.example"]
        db.add(vendor)
    await Vendors(ctx, "t").set_disabled(VENDOR, True)
    assert await reason(token) == rules.WITHDRAWN
    await Vendors(ctx, "t").set_disabled(VENDOR, False)
    await service.open(token)
    clock.advance(timedelta(hours=1))
    assert await reason(token) == rules.EXPIRED
    assert (await service.find(VENDOR))[0].invitation.state == "open"
    assert [v.invitation.id for v in await service.find(state="expired")] == [int(row)]


async def test_old_vendor_sign_in_rows_are_forgotten(
        world: tuple[Context, FakeClock, Mailbox]) -> None:
    from broker.services import vendor_contacts
    from broker.store.models import VendorLogin

    ctx, clock, mailbox = world

    async def rows() -> int:
        async with ctx.store.session() as db:
            return len((await db.exec(select(VendorLogin))).all())

    assert await vendor_contacts.request_link(ctx, CONTACT, "127.0.0.1") == 1
    token = link_in(last_to(mailbox, CONTACT), "/vendor/login/").rsplit("/", 1)[1]
    cookie, who = await vendor_contacts.spend_link(ctx, token, "127.0.0.1")
    assert await vendor_contacts.session_of(ctx, cookie) == who
    assert await vendor_contacts.request_link(ctx, CONTACT, "127.0.0.1") == 1  # never used
    assert await vendor_contacts.request_link(ctx, "nobody@acme.example", "x") == 0
    assert await rows() == 2
    clock.advance(timedelta(hours=20))
    await vendor_contacts.request_link(ctx, CONTACT, "127.0.0.1")
    assert await rows() == 3  # nothing a day old yet
    assert await vendor_contacts.session_of(ctx, cookie) is None  # 8 h sessions
    clock.advance(timedelta(hours=13))
    await vendor_contacts.request_link(ctx, CONTACT, "127.0.0.1")
    assert await rows() == 2  # the first two are gone


async def test_pending_and_decisions_are_planned_for_the_webhook(
        world: tuple[Context, FakeClock, Mailbox]) -> None:
    from broker.approvals.notify.plan import WEBHOOK, plan
    from broker.config import NotifySection

    ctx, _, mailbox = world
    await Invitations(ctx, "cli:admin").invite(VENDOR, "w@acme.example")
    await Invitations(ctx, "link").complete(token_of(mailbox, "w@acme.example"), "walt",
                                            public_key())
    await Invitations(ctx, "cli:admin").decide("walt", False)
    settings = NotifySection(webhook_url="https://hooks.hospital.example/broker")
    planned: dict[str, object] = {}
    async with ctx.store.session() as db:
        for event in (await db.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))).all():
            for delivery in await plan(db, event, settings, [], "https://broker.example"):
                assert delivery.channel == WEBHOOK
                planned[event.kind] = delivery.payload["event"]["subject"]
    assert planned == {"technician.pending": "walt", "technician.rejected": "walt"}


async def test_withdrawing_an_unused_invitation(world: tuple[Context, FakeClock, Mailbox]
                                                 ) -> None:
    """An admin takes back a link not used yet: it stops working at once, audited; a used
    one cannot be withdrawn (the technician is rejected instead)."""
    ctx, _, mailbox = world
    service = Invitations(ctx, "cli:admin")
    taken = await service.invite(VENDOR, "w@acme.example")
    token = token_of(mailbox, "w@acme.example")
    kept = await service.invite(VENDOR, "k@acme.example")
    await Invitations(ctx, "link").complete(token_of(mailbox, "k@acme.example"), "kay",
                                            public_key())
    assert taken.invitation.id is not None and kept.invitation.id is not None

    view = await Invitations(ctx, "staff:ann").withdraw(taken.invitation.id)
    assert view.invitation.state == "withdrawn" and view.invitation.decided_by == "staff:ann"
    for use in (service.open(token), service.complete(token, "wanda", public_key())):
        with pytest.raises(LinkRefused) as refused:
            await use
        assert refused.value.reason == rules.WITHDRAWN
    assert ("invitation.withdrawn", "staff:ann", VENDOR,
            {"invitation": taken.invitation.id, "email": "w@acme.example"}) in await kinds(ctx)
    assert [v.invitation.id for v in await service.find(state="withdrawn")] == [
        taken.invitation.id]

    with pytest.raises(Conflict, match=r"is withdrawn, not open$"):
        await service.withdraw(taken.invitation.id)
    with pytest.raises(Conflict, match=r"is pending, not open: reject the technician with"
                                       r" 'broker tech reject kay'"):
        await service.withdraw(kept.invitation.id)
    with pytest.raises(NotFound, match="no invitation with id 999"):
        await service.withdraw(999)
    assert [v.technician for v in await service.pending()] == ["kay"]  # untouched
