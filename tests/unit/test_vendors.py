"""Vendors as organisations and the technician lifecycle: the pure rules, the scheduler on a
fake clock (contract end, expiry, inactivity cut and disable on time), and the real CLI's
answers to bad input."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
import pytest
from sqlmodel import select

from broker.domain.errors import InvariantViolation
from broker.domain.grants import Refusal
from broker.domain.protocols import Protocol
from broker.domain.vendors import (
    VendorState,
    check_domain,
    email_in_domains,
    inactive_deadline,
    parse_end,
    refusal_for,
    shown_end,
)
from broker.errors import Refused
from broker.revocation.registry import LiveSessions
from broker.revocation.scheduler import Scheduler
from broker.services.directory import Directory
from broker.services.grants import check_access
from broker.services.requests import Requests
from broker.services.vendors import Vendors, login_succeeded
from broker.store.models import AuditEvent, Invitation, Technician
from broker.testing import FakeClock
from tests.unit.test_grant_life import approved_grant, make_context, open_live, settle

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import Cli

    from broker.services.context import Context

START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


# -- pure rules ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, domain", [("vendor.example", "vendor.example"),
                                          ("@Vendor.Example", "vendor.example"),
                                          (" sub.acme-med.org. ", "sub.acme-med.org")])
def test_domains_are_normalised(text: str, domain: str) -> None:
    assert check_domain(text) == domain


@pytest.mark.parametrize("text", ["", "localhost", "a b.example", "-x.example", "x@y.example",
                                  "vendor.example/evil", "x" * 300 + ".example"])
def test_bad_domains_are_refused_naming_the_option(text: str) -> None:
    with pytest.raises(InvariantViolation, match=r"^--domain .*not a mail domain"):
        check_domain(text)


def test_email_must_be_in_a_domain_case_insensitively() -> None:
    domains = ["acme.example", "acme.org"]
    assert email_in_domains("Tech+pumps@ACME.Example", domains)
    assert email_in_domains("tech@acme.org", domains)
    assert not email_in_domains("tech@sub.acme.example", domains)  # sub-domains are not in
    assert not email_in_domains("tech@acme.example.evil.org", domains)
    assert not email_in_domains("acme.example@evil.org", domains)
    assert email_in_domains("anyone@anywhere.example", [])  # no domains: any address


def test_a_date_means_through_that_day_utc() -> None:
    end = parse_end("--expires", "2026-12-31")
    assert end == datetime(2027, 1, 1, tzinfo=UTC)
    assert shown_end(end) == "2026-12-31"
    exact = parse_end("--expires", "2026-12-31T18:00:00+01:00")
    assert exact == datetime(2026, 12, 31, 17, tzinfo=UTC)
    assert shown_end(exact) == "2026-12-31 17:00:00 UTC"
    for bad in ("2026-13-01", "tomorrow", "2026-12-31T18:00:00"):
        with pytest.raises(InvariantViolation, match=r"^--expires: "):
            parse_end("--expires", bad)


def test_refusals_name_the_vendor_and_the_date() -> None:
    now = START
    ok = VendorState("Acme", False, now + timedelta(days=1))
    assert refusal_for(now, ok, False, None) is None
    assert refusal_for(now, VendorState("Acme", True, None), False, None) == (
        Refusal.VENDOR_DISABLED, "your company's access (Acme) is disabled")
    ended = VendorState("Acme", False, datetime(2026, 11, 24, tzinfo=UTC))
    assert refusal_for(now, ended, False, None) == (
        Refusal.CONTRACT_ENDED, "your company's contract (Acme) ended on 2026-11-23")
    assert refusal_for(now, ok, False, now) == (
        Refusal.ACCOUNT_EXPIRED, "your technician account expired on 2026-11-24 09:00:00 UTC")
    assert refusal_for(now, ok, True, None) == (
        Refusal.DISABLED, "your technician account is disabled")
    assert refusal_for(now, ok, True, None, tech_pending=True) == (
        Refusal.DISABLED, "your technician account is waiting for the hospital's approval")
    assert refusal_for(now, ok, False, None, tech_pending=True) is None


def test_inactivity_counts_from_the_latest_of_creation_login_and_enable() -> None:
    created = START
    assert inactive_deadline(created, None, None, 90) == START + timedelta(days=90)
    login = START + timedelta(days=30)
    assert inactive_deadline(created, login, None, 90) == login + timedelta(days=90)
    enabled = START + timedelta(days=100)
    assert inactive_deadline(created, login, enabled, 90) == enabled + timedelta(days=90)


# -- services and the scheduler on a fake clock ----------------------------------------------
async def kinds(ctx: Context) -> list[str]:
    async with ctx.store.session() as db:
        return list((await db.exec(select(AuditEvent.kind).order_by(AuditEvent.seq))).all())


async def run_scheduler(ctx: Context, sessions: LiveSessions) -> asyncio.Task[None]:
    task = asyncio.create_task(Scheduler(ctx, sessions).run())
    return task


async def test_contract_end_cuts_the_vendors_live_sessions_on_time(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)  # alice of vendor "B. Braun"
    try:
        await Vendors(ctx, "test").set_contract("B. Braun", START + timedelta(minutes=3))
        await approved_grant(ctx, minutes=10)
        sessions = LiveSessions()
        session = await open_live(ctx, sessions)
        task = await run_scheduler(ctx, sessions)
        await settle(clock)
        assert clock.next_deadline == START + timedelta(minutes=3)
        clock.set(START + timedelta(minutes=3) - timedelta(microseconds=1))
        await settle(clock)
        assert session.ended is None
        clock.set(START + timedelta(minutes=3))
        await settle(clock)
        assert session.ended == ("access ended: your company's contract (B. Braun) ended on"
                                 " 2026-11-24 09:03:00 UTC")
        assert (await kinds(ctx)).count("vendor.contract_ended") == 1
        access = await check_access(ctx, "alice", "pump-7", Protocol.SSH)
        assert access.decision.refusal is Refusal.CONTRACT_ENDED
        task.cancel()
    finally:
        await ctx.close()


async def test_vendor_disable_refuses_and_enable_lets_in_again(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    try:
        await approved_grant(ctx, minutes=10)
        vendors = Vendors(ctx, "test")
        await vendors.set_disabled("B. Braun", True)
        access = await check_access(ctx, "alice", "pump-7", Protocol.SSH)
        assert access.decision.detail == "your company's access (B. Braun) is disabled"
        with pytest.raises(Refused, match=r"company's access \(B\. Braun\) is disabled"):
            await Requests(ctx, "test").create("alice", "pump-7", timedelta(minutes=5),
                                               "battery check")
        with pytest.raises(Refused, match=r"vendor 'B\. Braun' is disabled"):
            await Directory(ctx, "test").add_technician(
                "bob", "B. Braun", [asyncssh.generate_private_key("ssh-ed25519")])
        await vendors.set_disabled("B. Braun", False)
        assert (await check_access(ctx, "alice", "pump-7", Protocol.SSH)).allowed
        assert [k for k in await kinds(ctx) if k.startswith("vendor.")] == [
            "vendor.added", "vendor.disabled", "vendor.enabled"]
    finally:
        await ctx.close()


async def test_expiry_and_inactivity_disable_on_time(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)  # alice, created at START, never logged in
    try:
        key = asyncssh.generate_private_key("ssh-ed25519")
        await Directory(ctx, "test").add_technician("bob", "B. Braun", [key],
                                                    expires_at=START + timedelta(days=2))
        sessions = LiveSessions()
        task = await run_scheduler(ctx, sessions)
        await settle(clock)  # (the scheduler wakes at least every 10 minutes)
        clock.set(START + timedelta(days=2) - timedelta(microseconds=1))
        await settle(clock)
        assert "technician.expired" not in await kinds(ctx)
        clock.set(START + timedelta(days=2))
        await settle(clock)
        assert "technician.expired" in await kinds(ctx)
        clock.set(START + timedelta(days=60))
        await login_succeeded(ctx, "alice", "pump-1")  # a login restarts alice's 90 days
        clock.set(START + timedelta(days=91))
        await settle(clock)
        assert "technician.inactive_disabled" not in await kinds(ctx)
        clock.set(START + timedelta(days=150))
        await settle(clock)
        assert (await kinds(ctx)).count("technician.inactive_disabled") == 1
        async with ctx.store.session() as db:
            techs = {t.name: t for t in (await db.exec(select(Technician))).all()}
        assert techs["alice"].disabled and techs["bob"].disabled
        task.cancel()
    finally:
        await ctx.close()


async def test_upgrade_makes_a_vendor_of_each_existing_vendor_text(tmp_path: Path) -> None:
    """An install from before vendors: each distinct Technician.vendor becomes a vendor row
    (no domains, no contract end) and each technician is linked to it; the inactivity clock
    starts at the upgrade."""
    from alembic import command

    from broker.store.engine import Store, alembic_config

    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    store = Store(url)
    config = alembic_config()

    def to(revision: str) -> Callable[[Any], None]:
        def upgrade(connection: Any) -> None:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        return upgrade

    try:
        async with store.engine.connect() as conn:
            await conn.run_sync(to("0012"))
            for name, vendor in (("alice", "Acme"), ("bob", "Acme"), ("carol", "B. Braun")):
                await conn.exec_driver_sql(
                    "INSERT INTO technician (name, vendor, disabled, created_at)"
                    f" VALUES ('{name}', '{vendor}', 0, '2020-01-01 00:00:00.000000')")
            await conn.commit()
            await conn.run_sync(to("head"))
            await conn.commit()
            vendors = (await conn.exec_driver_sql(
                "SELECT id, name, domains, disabled FROM vendor ORDER BY name")).all()
            techs = (await conn.exec_driver_sql(
                "SELECT name, vendor_id, enabled_at FROM technician ORDER BY name")).all()
    finally:
        await store.close()
    ids = {name: ident for ident, name, _, _ in vendors}
    assert sorted(ids) == ["Acme", "B. Braun"]
    assert all(json.loads(domains) == [] and not disabled for _, _, domains, disabled in vendors)
    assert [(name, vendor_id) for name, vendor_id, _ in techs] == [
        ("alice", ids["Acme"]), ("bob", ids["Acme"]), ("carol", ids["B. Braun"])]
    assert all(enabled_at is not None for _, _, enabled_at in techs)


# -- the real CLI ----------------------------------------------------------------------------
@pytest.mark.timeout(300)  # some dozens of CLI start-ups on a loaded host
def test_vendor_cli_bad_input_and_round_trip(cli: Cli, ssh_pubkey: Path) -> None:
    add = cli("vendor", "add", "Acme", "--domain", "acme.example", "--contract-until",
              "2099-06-30", "--contact", "ops@acme.example", "--json")
    assert add.code == 0, add.err
    assert json.loads(add.out)["contract_until"] == "2099-06-30"
    bad = cli.many([
        ["vendor", "add", "Acme"],
        ["vendor", "add", "X", "--domain", "not a domain"],
        ["vendor", "add", "X", "--contract-until", "someday"],
        ["vendor", "add", "X", "--contact", "nobody"],
        ["vendor", "show", "Nope"],
        ["vendor", "enable", "Acme"],
        ["tech", "add", "eve", "--vendor", "Acme", "--key", str(ssh_pubkey), "--email",
         "eve@evil.example"],
        ["tech", "expire", "nobody", "2030-01-01"],
        ["tech", "expire", "x", "31/12/2030"],
        ["vendor"],
    ])
    codes = [(r.code, r.err.strip()) for r in bad]
    assert [c for c, _ in codes] == [1, 2, 2, 2, 1, 1, 1, 1, 2, 2], codes
    for _, err in codes[:-1]:
        assert len(err.splitlines()) == 1 and err.startswith("broker: "), err
        assert "Traceback" not in err
    assert "not in vendor Acme's domains" in codes[6][1]
    ok = cli("tech", "add", "alice", "--vendor", "Acme", "--key", str(ssh_pubkey), "--email",
             "Alice@ACME.Example", "--expires", "2099-01-31")
    assert ok.code == 0, ok.err
    legacy = cli("tech", "add", "bob", "--vendor", "Newco", "--key", str(ssh_pubkey))
    assert legacy.code == 0 and "registered just now" in legacy.out, legacy.err
    assert cli("vendor", "disable", "Acme").code == 0
    shown = json.loads(cli("vendor", "show", "Acme", "--json").out)
    assert shown["state"] == "disabled"
    assert shown["technicians"] == [{
        "name": "alice", "email": "Alice@ACME.Example", "state": "vendor-disabled",
        "last_login_at": None, "expires": "2099-01-31",
        "expires_at": "2099-02-01T00:00:00+00:00"}]
    listed = json.loads(cli("vendor", "list", "--json").out)
    assert [v["name"] for v in listed] == ["Acme", "Newco"]
    human = cli("vendor", "show", "Acme")
    assert "alice" in human.out and "vendor-disabled" in human.out and "never" in human.out


async def test_a_technician_waiting_for_approval_is_told_so_everywhere(tmp_path: Path) -> None:
    """Enrolled by invitation and not yet approved: the access check, the listings and the
    account refusal all say "waiting for approval", not "disabled"."""
    ctx = await make_context(tmp_path, FakeClock(START))
    try:
        await approved_grant(ctx, minutes=10)
        async with ctx.store.session() as db:
            alice = (await db.exec(select(Technician).where(Technician.name == "alice"))).one()
            alice.disabled = True
            db.add(alice)
            db.add(Invitation(vendor_id=alice.vendor_id or 0, email="alice@bbraun.example",
                              token_hash="0" * 64, state="pending", expires_at=START,
                              created_by="test", created_at=START, technician_id=alice.id))
        access = await check_access(ctx, "alice", "pump-7", Protocol.SSH)
        assert access.decision.refusal is Refusal.DISABLED
        assert access.decision.detail == (
            "your technician account is waiting for the hospital's approval")
        assert (await Directory(ctx, "t").technician("alice")).state == "pending"
        assert [v.state for v in await Directory(ctx, "t").technicians()] == ["pending"]
        async with ctx.store.session() as db:
            invitation = (await db.exec(select(Invitation))).one()
            invitation.state = "rejected"
            db.add(invitation)
        access = await check_access(ctx, "alice", "pump-7", Protocol.SSH)
        assert access.decision.detail == "your technician account is disabled"
        assert (await Directory(ctx, "t").technician("alice")).state == "disabled"
    finally:
        await ctx.close()
