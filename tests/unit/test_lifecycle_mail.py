"""The vendor lifecycle e-mailed (issue 20): a vendor disabled or its contract ended tells its
contact, each of its technicians with an address and every approver, one mail each; a
technician expired or disabled for inactivity tells them and the contact; contract-end warnings
14 days and 1 day ahead, once each. A real aiosmtpd server receives the mails, a real aiohttp
receiver the webhook; the clock is a FakeClock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from broker.approvals.notify import Notifier
from broker.approvals.notify.dispatcher import outbox
from broker.config import load_config
from broker.domain.vendors import contract_warning_due, next_contract_warning
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.setup import migrate_database
from broker.services.vendors import Vendors, lifecycle_round, next_lifecycle_deadline
from broker.testing import FakeClock
from tests.approval_kit import Mailbox, body_text, events, set_config, smtp_server
from tests.pg_kit import PostgresCluster

START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)
VENDOR = "Acme {{ 7*7 }} Medical"  # free text: printed as it is, never evaluated
CONTACT = "service-desk@acme.example"
APPROVERS = ["bob@hospital.example", "carol@hospital.example"]


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


async def world(broker_dir: Path, clock: FakeClock, contact: str | None = CONTACT,
                contract_end: datetime | None = None, database_url: str | None = None
                ) -> Context:
    """Vendor VENDOR (``contact``) with tina and tom (addresses), nomail (none) and old
    (an address, but her own account is disabled); approvers bob and carol; and a second
    vendor, Other, whose technician must never hear of VENDOR's events."""
    ctx = open_node(broker_dir, clock, database_url)
    await Vendors(ctx, "test").add(VENDOR, [], contract_end, contact)
    directory = Directory(ctx, "test")
    for name, email in [("tina", "tina@acme.example"), ("tom", "tom@acme.example"),
                        ("nomail", None), ("old", "old@acme.example")]:
        await directory.add_technician(name, VENDOR, [_key()], email=email)
    await directory.disable_technician("old")
    await directory.add_technician("olga", "Other", [_key()], email="olga@other.example")
    await directory.add_approver("bob", APPROVERS[0], ["biomed"])
    await directory.add_approver("carol", APPROVERS[1], ["security"])
    return ctx


def open_node(broker_dir: Path, clock: FakeClock, database_url: str | None = None,
              node: str = "node-1") -> Context:
    environ = {"BROKER_BROKER_DATABASE_URL": database_url} if database_url else None
    ctx = Context.open(load_config(broker_dir / "broker.toml", environ=environ), clock=clock)
    ctx.node = node
    return ctx


def _key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


def mail_on(broker_dir: Path, port: int) -> None:
    set_config(broker_dir, "notify", smtp_host="127.0.0.1", smtp_port=port,
               mail_from="broker@hospital.example")


async def notify(ctx: Context) -> None:
    notifier = Notifier(ctx)
    try:
        await notifier.plan_new_events()
        await notifier.deliver_due()
    finally:
        await notifier.close()


def one_to(mailbox: Mailbox, address: str) -> tuple[str, str]:
    """(subject, body with its lines joined) of the one mail ``address`` received."""
    received = mailbox.to(address)
    assert len(received) == 1, f"{address}: {len(received)} mails"
    return str(received[0]["Subject"]), flat(received[0])


def flat(message: EmailMessage) -> str:
    """The plain-text body, every run of white space (line breaks too) one space."""
    return " ".join(body_text(message).split())


def addressees(messages: list[EmailMessage]) -> list[str]:
    return sorted(str(m["To"]).rsplit("<", 1)[1].rstrip(">") for m in messages)


async def test_a_disabled_vendor_tells_its_contact_each_technician_and_every_approver(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    mail_on(broker_dir, port)
    ctx = await world(broker_dir, clock)
    try:
        await notify(ctx)
        assert mailbox.messages == []  # adding people tells nobody
        await Vendors(ctx, "admin:ops").set_disabled(VENDOR, True)
        await notify(ctx)
        # old's own account was already off, nomail has no address, olga is another vendor's
        assert addressees(mailbox.messages) == sorted(
            [CONTACT, "tina@acme.example", "tom@acme.example", *APPROVERS])
        subject = f"{VENDOR}: remote access through the broker is suspended"

        contact_subject, text = one_to(mailbox, CONTACT)
        assert contact_subject == subject and "49" not in text
        assert f"Hello {VENDOR}," in text
        assert f"Vendor {VENDOR} was disabled at the vendor access broker by admin:ops on" \
               " 2026-11-24 09:00 UTC." in text
        assert "none of your technicians can sign in" in text
        assert f"Technicians of {VENDOR} concerned (3): nomail, tina, tom" in text
        assert "Who to contact: the hospital staff who manage vendor access at" \
               " https://broker.test:8443." in text

        tech_subject, text = one_to(mailbox, "tina@acme.example")
        assert tech_subject == subject and "Hello tina," in text
        assert "your technician account tina cannot sign in" in text
        assert f"Who to contact: your company's contact for this hospital, {CONTACT}." in text
        assert "tom" not in text  # a technician is not told who else works for the vendor

        approver_subject, text = one_to(mailbox, "carol@hospital.example")
        assert approver_subject == subject and "Hello carol," in text
        assert f"To let them back in: broker vendor enable {VENDOR}" in text
        assert f"Vendor contact: {CONTACT}" in text
        assert "nomail, tina, tom" in text

        await Vendors(ctx, "admin:ops").set_disabled(VENDOR, False)
        await notify(ctx)
        assert len(mailbox.messages) == 5  # enabling again is not mailed
        assert {row.state for row in await outbox(ctx)} == {"sent"}
    finally:
        await ctx.close()


async def test_a_vendor_without_a_contact_still_tells_technicians_and_approvers(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    mail_on(broker_dir, port)
    ctx = await world(broker_dir, clock, contact=None)
    try:
        await Vendors(ctx, "admin:ops").set_disabled(VENDOR, True)
        await notify(ctx)
        assert addressees(mailbox.messages) == sorted(
            ["tina@acme.example", "tom@acme.example", *APPROVERS])
        _, text = one_to(mailbox, "tom@acme.example")
        assert ("Who to contact: your company's contact for this hospital (the broker has no"
                f" address on file for {VENDOR}).") in text
        _, text = one_to(mailbox, "bob@hospital.example")
        assert "Vendor contact: none on file" in text
    finally:
        await ctx.close()


async def test_one_mail_per_address_the_contacts_first(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    mail_on(broker_dir, port)
    ctx = await world(broker_dir, clock, contact="Tina@ACME.example")  # tina is the contact
    try:
        await Directory(ctx, "test").add_approver("ted", "TOM@acme.example", ["biomed"])
        await Vendors(ctx, "admin:ops").set_disabled(VENDOR, True)
        await notify(ctx)
        assert sorted(str(m["To"]) for m in mailbox.messages) == [
            f"{VENDOR} <Tina@ACME.example>", "bob <bob@hospital.example>",
            "carol <carol@hospital.example>", "tom <tom@acme.example>"]
        _, text = one_to(mailbox, "Tina@ACME.example")
        assert "none of your technicians can sign in" in text  # the contact's mail
        _, text = one_to(mailbox, "tom@acme.example")
        assert "your technician account tom cannot sign in" in text  # not ted's approver mail
    finally:
        await ctx.close()


async def test_contract_end_warns_twice_ahead_then_tells_everyone_it_ended(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    mail_on(broker_dir, port)
    end = datetime(2026, 12, 25, tzinfo=UTC)  # "through 2026-12-24"
    ctx = await world(broker_dir, clock, contract_end=end)
    try:
        assert await next_lifecycle_deadline(ctx) == end - timedelta(days=14)
        assert await lifecycle_round(ctx) == 0
        await notify(ctx)
        assert mailbox.messages == []

        clock.set(end - timedelta(days=14) - timedelta(microseconds=1))
        await lifecycle_round(ctx)
        assert await events(ctx, "vendor.contract_ending") == []
        clock.set(end - timedelta(days=14))
        for _ in range(2):  # every node runs the round: the warning is given once
            assert await lifecycle_round(ctx) == 0  # a warning refuses nobody
        assert await events(ctx, "vendor.contract_ending") == [
            ("vendor.contract_ending", VENDOR,
             {"contract_end": end.isoformat(), "days": 14, "days_left": 14})]
        assert await next_lifecycle_deadline(ctx) == end - timedelta(days=1)
        await notify(ctx)
        assert addressees(mailbox.messages) == sorted(
            [CONTACT, "tina@acme.example", "tom@acme.example", *APPROVERS])
        subject, text = one_to(mailbox, "tina@acme.example")
        assert subject == f"{VENDOR}: the contract ends in 14 days (2026-12-24)"
        assert "valid through 2026-12-24" in text
        assert "your technician account tina cannot sign in" in text
        _, text = one_to(mailbox, CONTACT)
        assert "unless the contract is renewed" in text

        clock.set(end - timedelta(hours=20))
        await lifecycle_round(ctx)
        await lifecycle_round(ctx)
        await notify(ctx)
        assert len(mailbox.messages) == 10
        tomorrow = [m for m in mailbox.to("bob@hospital.example")
                    if str(m["Subject"]) == f"{VENDOR}: the contract ends within a day"
                                           " (2026-12-24)"]
        assert len(tomorrow) == 1
        assert f"After a renewal: broker vendor contract {VENDOR} NEW-END-DATE" in \
            flat(tomorrow[0])
        assert await next_lifecycle_deadline(ctx) == end  # the end itself, no warning left

        clock.set(end)
        assert await lifecycle_round(ctx) == 1
        await notify(ctx)
        ended = [m for m in mailbox.messages if "contract ended" in str(m["Subject"])]
        assert addressees(ended) == sorted(
            [CONTACT, "tina@acme.example", "tom@acme.example", *APPROVERS])
        (to_tom,) = [m for m in ended if "tom@" in str(m["To"])]
        assert to_tom["Subject"] == f"{VENDOR}: the contract ended, remote access is closed"
        text = flat(to_tom)
        assert f"The contract of vendor {VENDOR} with the hospital ended (through" \
               " 2026-12-24)." in text
        assert "your technician account tom cannot sign in" in text
        assert len(await events(ctx, "vendor.contract_ending")) == 2
    finally:
        await ctx.close()


async def test_a_new_contract_end_is_warned_afresh_and_a_disabled_vendor_is_not(
        broker_dir: Path, clock: FakeClock) -> None:
    ctx = await world(broker_dir, clock, contract_end=START + timedelta(hours=12))
    try:
        await lifecycle_round(ctx)  # 12 hours ahead: the 1-day warning only, never the 14-day
        assert [d["days"] for _, _, d in await events(ctx, "vendor.contract_ending")] == [1]
        later = START + timedelta(days=30)
        await Vendors(ctx, "test").set_contract(VENDOR, later)
        clock.set(later - timedelta(days=13))
        await lifecycle_round(ctx)
        assert [(d["days"], d["contract_end"]) for _, _, d in
                await events(ctx, "vendor.contract_ending")] == [
            (1, (START + timedelta(hours=12)).isoformat()), (14, later.isoformat())]
        await Vendors(ctx, "test").set_disabled(VENDOR, True)
        clock.set(later - timedelta(hours=1))
        assert await next_lifecycle_deadline(ctx) == later  # no warning planned for it
        await lifecycle_round(ctx)
        assert len(await events(ctx, "vendor.contract_ending")) == 2
    finally:
        await ctx.close()


async def test_on_postgresql_two_nodes_warn_and_mail_once(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int],
        postgres: PostgresCluster) -> None:
    mailbox, port = smtp
    mail_on(broker_dir, port)
    url = postgres.create_database()
    await migrate_database(url)
    end = START + timedelta(days=10)
    one = await world(broker_dir, clock, contract_end=end, database_url=url)
    two = open_node(broker_dir, clock, url, node="node-2")
    try:
        await asyncio.gather(lifecycle_round(one), lifecycle_round(two))
        assert [d["days"] for _, _, d in await events(one, "vendor.contract_ending")] == [14]
        await asyncio.gather(notify(one), notify(two))
        await asyncio.gather(notify(one), notify(two))
        assert addressees(mailbox.messages) == sorted(
            [CONTACT, "tina@acme.example", "tom@acme.example", *APPROVERS])
        subject, text = one_to(mailbox, "bob@hospital.example")
        # given late (the end was set 10 days ahead): it says how long is really left
        assert subject == f"{VENDOR}: the contract ends in 10 days (2026-12-04 09:00:00 UTC)"
        assert "valid through 2026-12-04 09:00:00 UTC" in text
        assert f"Vendor contact: {CONTACT}" in text
    finally:
        await one.close()
        await two.close()


def test_which_contract_warning_is_due() -> None:
    end = START + timedelta(days=20)
    assert contract_warning_due(START, end, set()) is None
    assert contract_warning_due(end - timedelta(days=14), end, set()) == 14
    assert contract_warning_due(end - timedelta(days=2), end, {14}) is None
    assert contract_warning_due(end - timedelta(hours=1), end, {14}) == 1
    assert contract_warning_due(end - timedelta(hours=1), end, set()) == 1  # 14 is not sent late
    assert contract_warning_due(end - timedelta(hours=1), end, {1}) is None
    assert contract_warning_due(end, end, set()) is None  # ended: vendor.contract_ended says it
    assert next_contract_warning(START, end) == end - timedelta(days=14)
    assert next_contract_warning(end - timedelta(days=3), end) == end - timedelta(days=1)
    assert next_contract_warning(end - timedelta(hours=1), end) is None


async def test_an_expired_technician_and_the_contact_are_told_not_the_approvers(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    mail_on(broker_dir, port)
    ctx = await world(broker_dir, clock)
    try:
        await Directory(ctx, "test").add_technician(
            "tess", VENDOR, [_key()], email="tess@acme.example",
            expires_at=datetime(2026, 11, 27, tzinfo=UTC))
        clock.set(datetime(2026, 11, 27, tzinfo=UTC))
        assert await lifecycle_round(ctx) == 1
        await notify(ctx)
        assert addressees(mailbox.messages) == [CONTACT, "tess@acme.example"]
        subject, text = one_to(mailbox, "tess@acme.example")
        assert subject == "Technician account tess has expired"
        assert ("Your technician account tess at the vendor access broker reached its expiry"
                " date (valid through 2026-11-26) and was disabled.") in text
        assert "What this means for you: you cannot sign in" in text
        assert f"your company's contact for this hospital, {CONTACT}." in text
        _, text = one_to(mailbox, CONTACT)
        assert f"The technician account tess ({VENDOR}) at the vendor access broker" in text
        assert "ask the hospital staff who manage vendor access to set a later expiry" in text
    finally:
        await ctx.close()


async def test_inactivity_disable_tells_each_technician_and_the_contact_once_each(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    mail_on(broker_dir, port)
    ctx = await world(broker_dir, clock)
    try:
        clock.set(START + timedelta(days=91))
        assert await lifecycle_round(ctx) == 4  # tina, tom, nomail and olga (old was off)
        await notify(ctx)
        assert addressees(mailbox.to(CONTACT)) == [CONTACT] * 3  # one per technician of its own
        assert addressees(mailbox.messages) == sorted(
            [CONTACT] * 3 + ["olga@other.example", "tina@acme.example", "tom@acme.example"])
        subject, text = one_to(mailbox, "tom@acme.example")
        assert subject == "Technician account tom was disabled after 90 days without a login"
        assert "nobody signed in with it for 90 days (last login: never)" in text
        assert "ask for it to be enabled" in text
        (about_nomail,) = [m for m in mailbox.to(CONTACT) if "nomail" in str(m["Subject"])]
        assert "If they still service devices at this hospital" in flat(about_nomail)
        subject, text = one_to(mailbox, "olga@other.example")
        assert "company's contact for this hospital (the broker has no address on file for" \
               " Other)" in text
        assert VENDOR not in text
    finally:
        await ctx.close()


async def test_a_subject_naming_nothing_of_its_kind_mails_nobody(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    mail_on(broker_dir, port)
    ctx = await world(broker_dir, clock)
    try:
        async with ctx.store.session() as db:
            # a vendor's name under a technician's kind, a technician's under a vendor's, and
            # strings that would act if they reached SQL or a template
            for kind, subject in [("technician.expired", VENDOR), ("vendor.disabled", "tina"),
                                  ("vendor.disabled", "x' OR '1'='1"),
                                  ("technician.expired", "{{ facts }}"),
                                  ("vendor.contract_ended", "%")]:
                await ctx.audit(db, kind, "broker", subject)
        await notify(ctx)
        assert mailbox.messages == []
    finally:
        await ctx.close()


class Hook:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(json.loads(await request.read()))
        return web.Response(text="ok")


@pytest.fixture
async def hook() -> AsyncIterator[tuple[Hook, str]]:
    receiver = Hook()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield receiver, str(server.make_url("/hook"))
    finally:
        await server.close()


async def test_without_smtp_every_lifecycle_event_still_reaches_the_webhook(
        broker_dir: Path, clock: FakeClock, hook: tuple[Hook, str]) -> None:
    receiver, url = hook
    set_config(broker_dir, "notify", webhook_url=url)
    ctx = await world(broker_dir, clock, contract_end=START + timedelta(days=200))
    try:
        await Directory(ctx, "test").add_technician("tess", VENDOR, [_key()],
                                                    expires_at=START + timedelta(days=1))
        clock.set(START + timedelta(days=1))
        await lifecycle_round(ctx)  # tess expires
        clock.set(START + timedelta(days=95))
        await lifecycle_round(ctx)  # tina, tom, nomail, olga inactive
        clock.set(START + timedelta(days=190))
        await lifecycle_round(ctx)  # 10 days before the end: the 14-day warning
        clock.set(START + timedelta(days=200))
        await lifecycle_round(ctx)  # the contract ends
        await Vendors(ctx, "admin:ops").set_disabled(VENDOR, True)
        await notify(ctx)
        rows = await outbox(ctx)
        assert {(r.channel, r.state) for r in rows} == {("webhook", "sent")}
        kinds = [b["event"]["kind"] for b in receiver.bodies]
        assert kinds == ["technician.expired"] + ["technician.inactive_disabled"] * 4 + [
            "vendor.contract_ending", "vendor.contract_ended", "vendor.disabled"]
        expired = receiver.bodies[0]
        assert expired["technician"] == {
            "name": "tess", "vendor": VENDOR, "last_login_at": None,
            "expires_at": (START + timedelta(days=1)).isoformat()}
        assert expired["vendor"]["contact"] == CONTACT
        disabled = receiver.bodies[-1]
        assert disabled["vendor"]["name"] == VENDOR and disabled["vendor"]["disabled"]
        assert disabled["vendor"]["technicians"] == []  # every account is off by now
        assert "technician" not in disabled and "audience" not in disabled
    finally:
        await ctx.close()
