"""Break-glass grants: opened at once without approval, capped by policy, loudly audited,
ended on time like any grant, and reviewed once by a registered approver.

Service tests run on a FakeClock over a real SQLite store; CLI tests run the real ``broker``
console script and check exit statuses and one-line errors."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from textwrap import dedent
from typing import TYPE_CHECKING, Any

import asyncssh
import pytest
from sqlmodel import col, select

from broker.domain.protocols import ALL_PROTOCOLS, Protocol
from broker.errors import Conflict, NotFound, Refused, UsageError
from broker.revocation.registry import LiveSessions
from broker.revocation.scheduler import WINDOW_CLOSED, Scheduler
from broker.services import breakglass
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.grants import Grants, check_access
from broker.services.lookup import by_name
from broker.services.requests import Requests
from broker.services.setup import initialise, migrate_database
from broker.store.models import Approver, AuditEvent, Device
from broker.testing import FakeClock
from tests.unit.test_grant_life import open_live, settle

if TYPE_CHECKING:
    from tests.conftest import Cli

START = datetime(2026, 11, 24, 3, 0, tzinfo=UTC)  # a Tuesday, 03:00 UTC: outside office hours
REASON = "infusion pump alarm loop on ICU bed 4"


async def make_context(tmp_path: Path, clock: FakeClock) -> Context:
    config = initialise(tmp_path)
    await migrate_database(config.database_url)
    ctx = Context.open(config, clock=clock)
    directory = Directory(ctx, "test")
    key = asyncssh.generate_private_key("ssh-ed25519")
    await directory.add_technician("alice", "Roche Diagnostics", [key])
    await directory.add_approver("dana", "dana@hospital.example", ["biomed"])
    await directory.add_approver("erin", "erin@hospital.example", ["laboratory"])
    for name, tags in (("pump-7", ["infusion"]), ("cobas-1", ["lab"])):
        await directory.add_device(Device(name=name, host="127.0.0.1", port=22,
                                          login_user="service", tags=tags), "password", b"pw")
    return ctx


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
async def ctx(tmp_path: Path, clock: FakeClock) -> Any:
    context = await make_context(tmp_path / "broker", clock)
    yield context
    await context.close()


async def events(ctx: Context, kind: str) -> list[dict[str, Any]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(AuditEvent.kind == kind)
                              .order_by(col(AuditEvent.seq)))).all()
    return [{"actor": r.actor, "subject": r.subject, **json.loads(r.data)} for r in rows]


LAB_POLICIES = """
policies:
  - name: lab-analyzers
    vendors: ["Roche Diagnostics"]
    devices: {tags: [lab]}
    max_duration: 3h
    protocols: [ssh, scp]
    approvals:
      - {count: 2, groups: [laboratory]}
    hours: {days: [mon, tue, wed, thu, fri], from: "08:00", to: "17:00", timezone: UTC}
    breakglass_max: 30m
  - name: pumps-no-breakglass
    devices: {tags: [infusion]}
    max_duration: 2h
"""


def write_policies(ctx: Context, text: str = LAB_POLICIES) -> None:
    ctx.config.policy_dir.mkdir(parents=True, exist_ok=True)
    (ctx.config.policy_dir / "site.yaml").write_text(dedent(text).lstrip())


# --- opening --------------------------------------------------------------------------------

async def test_default_policy_opens_an_active_grant_now_without_any_approval(
        ctx: Context) -> None:
    before = await check_access(ctx, "alice", "pump-7", Protocol.SSH)
    assert not before.allowed
    grant = await breakglass.open_breakglass(ctx, "alice", "pump-7", timedelta(minutes=45),
                                             f"  {REASON} ", "cli:oncall")
    assert grant.breakglass and grant.state == "active" and grant.request_id is None
    assert (grant.start, grant.end) == (START, START + timedelta(minutes=45))
    assert frozenset(grant.protocols) == ALL_PROTOCOLS
    assert (grant.breakglass_reason, grant.breakglass_by) == (REASON, "cli:oncall")
    assert grant.reviewed_at is None
    access = await check_access(ctx, "alice", "pump-7", Protocol.SSH)
    assert access.allowed and access.grant is not None and access.grant.id == grant.id
    [event] = await events(ctx, "grant.breakglass")
    assert event["actor"] == "cli:oncall" and event["subject"] == f"grant:{grant.id}"
    assert event["technician"] == "alice" and event["vendor"] == "Roche Diagnostics"
    assert event["device"] == "pump-7" and event["reason"] == REASON
    assert event["end"] == (START + timedelta(minutes=45)).isoformat()
    assert event["opened_by"] == "cli:oncall" and event["policy"] == "default"
    assert event["approvers"] == ["dana", "erin"]
    assert f"broker grant review {grant.id}" in event["review"]
    assert [r.grant.id for r in await breakglass.unreviewed(ctx)] == [grant.id]


async def test_the_default_policy_caps_break_glass_at_one_hour(ctx: Context) -> None:
    with pytest.raises(Refused, match=r"limits break-glass to 1h; --for 61m is longer"):
        await breakglass.open_breakglass(ctx, "alice", "pump-7", timedelta(minutes=61), REASON,
                                         "cli:oncall")
    grant = await breakglass.open_breakglass(ctx, "alice", "pump-7", timedelta(hours=1), REASON,
                                             "cli:oncall")
    assert grant.end - grant.start == timedelta(hours=1)
    [refused] = await events(ctx, "breakglass.refused")
    assert refused["technician"] == "alice" and refused["duration_s"] == 61 * 60
    assert "1h" in refused["refusal"]


async def test_policy_cap_applies_and_hours_and_approvals_do_not(ctx: Context) -> None:
    write_policies(ctx)
    with pytest.raises(Refused, match=r"policy lab-analyzers \(.*site.yaml:2\) limits"
                                      r" break-glass to 30m; --for 31m is longer"):
        await breakglass.open_breakglass(ctx, "alice", "cobas-1", timedelta(minutes=31),
                                         REASON, "cli:oncall")
    grant = await breakglass.open_breakglass(ctx, "alice", "cobas-1", timedelta(minutes=30),
                                             REASON, "cli:oncall")
    assert grant.state == "active" and sorted(grant.protocols) == ["scp", "ssh"]
    assert (await check_access(ctx, "alice", "cobas-1", Protocol.SSH)).allowed
    assert not (await check_access(ctx, "alice", "cobas-1", Protocol.SFTP)).allowed


async def test_a_policy_without_breakglass_max_forbids_it(ctx: Context) -> None:
    write_policies(ctx)
    with pytest.raises(Refused, match=r"^policy pumps-no-breakglass \(.*site.yaml:11\) does"
                                      r" not allow break-glass access to pump-7"):
        await breakglass.open_breakglass(ctx, "alice", "pump-7", timedelta(minutes=5), REASON,
                                         "cli:oncall")
    [refused] = await events(ctx, "breakglass.refused")
    assert refused["device"] == "pump-7" and "does not allow" in refused["refusal"]
    assert await events(ctx, "grant.breakglass") == []


async def test_no_matching_policy_refuses(ctx: Context) -> None:
    write_policies(ctx, """
        policies:
          - name: siemens-only
            vendors: ["Siemens Healthineers"]
            breakglass_max: 1h
        """)
    with pytest.raises(Refused, match=r"no policy lets alice \(Roche Diagnostics\) reach"
                                      r" cobas-1"):
        await breakglass.open_breakglass(ctx, "alice", "cobas-1", timedelta(minutes=5),
                                         REASON, "cli:oncall")


async def test_broken_policy_files_fail_closed(ctx: Context) -> None:
    write_policies(ctx, "policies:\n  - name: x\n    breakglass_max: forever\n")
    with pytest.raises(Exception, match=r"site.yaml:3: policies\[0\].breakglass_max"):
        await breakglass.open_breakglass(ctx, "alice", "cobas-1", timedelta(minutes=5),
                                         REASON, "cli:oncall")
    assert await events(ctx, "grant.breakglass") == []


@pytest.mark.parametrize("state, shown", [("maintenance", "in maintenance"),
                                          ("retired", "retired")])
async def test_devices_out_of_service_are_refused(ctx: Context, state: str, shown: str) -> None:
    await Directory(ctx, "test").set_device_state("pump-7", state)
    with pytest.raises(Refused, match=f"^device pump-7 is {shown}: no break-glass access$"):
        await breakglass.open_breakglass(ctx, "alice", "pump-7", timedelta(minutes=5), REASON,
                                         "cli:oncall")


async def test_disabled_technicians_and_unknown_names_are_refused(ctx: Context) -> None:
    with pytest.raises(NotFound, match="no technician named 'mallory'"):
        await breakglass.open_breakglass(ctx, "mallory", "pump-7", timedelta(minutes=5), REASON,
                                         "cli:oncall")
    with pytest.raises(NotFound, match="no device named 'pump-99'"):
        await breakglass.open_breakglass(ctx, "alice", "pump-99", timedelta(minutes=5), REASON,
                                         "cli:oncall")
    await Directory(ctx, "test").disable_technician("alice")
    with pytest.raises(Refused, match="technician alice is disabled"):
        await breakglass.open_breakglass(ctx, "alice", "pump-7", timedelta(minutes=5), REASON,
                                         "cli:oncall")
    refusals = [e["refusal"] for e in await events(ctx, "breakglass.refused")]
    assert len(refusals) == 3 and "mallory" in refusals[0] and "disabled" in refusals[2]


@pytest.mark.parametrize("reason", ["", "   ", "urgent", "pump broken"])
async def test_a_reason_of_fewer_than_three_words_is_a_usage_error(ctx: Context,
                                                                   reason: str) -> None:
    with pytest.raises(UsageError, match="--reason must say in at least 3 words"):
        await breakglass.open_breakglass(ctx, "alice", "pump-7", timedelta(minutes=5), reason,
                                         "cli:oncall")
    assert len(await events(ctx, "breakglass.refused")) == 1
    assert await events(ctx, "grant.breakglass") == []


# --- the end -------------------------------------------------------------------------------

async def test_a_break_glass_grant_ends_on_time_and_its_review_stays_open(
        ctx: Context, clock: FakeClock) -> None:
    grant = await breakglass.open_breakglass(ctx, "alice", "pump-7", timedelta(minutes=10),
                                             REASON, "cli:oncall")
    sessions = LiveSessions()
    session = await open_live(ctx, sessions)
    task = asyncio.create_task(Scheduler(ctx, sessions).run())
    try:
        await settle(clock)
        clock.set(grant.end - timedelta(microseconds=1))
        await settle(clock)
        assert session.ended is None
        clock.set(grant.end)
        await settle(clock)
        assert session.ended == WINDOW_CLOSED
    finally:
        task.cancel()
    assert (await Grants(ctx, "test").show(grant.id or 0)).grant.state == "expired"
    assert not (await check_access(ctx, "alice", "pump-7", Protocol.SSH)).allowed
    assert [r.grant.id for r in await breakglass.unreviewed(ctx)] == [grant.id]


# --- review --------------------------------------------------------------------------------

async def test_review_closes_the_item_once(ctx: Context, clock: FakeClock) -> None:
    grant = await breakglass.open_breakglass(ctx, "alice", "pump-7", timedelta(minutes=10),
                                             REASON, "cli:oncall")
    clock.advance(timedelta(hours=2))
    reviewed = await breakglass.review(ctx, grant.id or 0, "dana", "  watched the recording ")
    assert reviewed.reviewed_at == START + timedelta(hours=2)
    assert (reviewed.reviewed_by, reviewed.review_comment) == ("dana", "watched the recording")
    assert await breakglass.unreviewed(ctx) == []
    [event] = await events(ctx, "grant.reviewed")
    assert event["actor"] == "approver:dana" and event["subject"] == f"grant:{grant.id}"
    assert event["comment"] == "watched the recording" and event["technician"] == "alice"
    with pytest.raises(Conflict, match=f"grant {grant.id} was already reviewed by dana at"):
        await breakglass.review(ctx, grant.id or 0, "erin", "second opinion")
    assert len(await events(ctx, "grant.reviewed")) == 1
    [refused] = await events(ctx, "breakglass.review_refused")
    assert refused["actor"] == "approver:erin" and "already reviewed" in refused["refusal"]


async def test_review_refusals(ctx: Context) -> None:
    grant = await breakglass.open_breakglass(ctx, "alice", "pump-7", timedelta(minutes=10),
                                             REASON, "cli:oncall")
    ident = grant.id or 0
    request = await Requests(ctx, "test").create("alice", "pump-7", timedelta(minutes=10),
                                                 "battery check")
    approved = await Requests(ctx, "approver:dana").decide(request.id or 0, "dana", True)
    assert approved.grant is not None
    with pytest.raises(Conflict, match=f"grant {approved.grant.id} is not a break-glass grant"):
        await breakglass.review(ctx, approved.grant.id or 0, "dana", "looks fine")
    with pytest.raises(NotFound, match="no approver named 'alice'"):
        await breakglass.review(ctx, ident, "alice", "all good")
    with pytest.raises(NotFound, match="no grant with id 999"):
        await breakglass.review(ctx, 999, "dana", "all good")
    with pytest.raises(UsageError, match="--comment must say what the review found"):
        await breakglass.review(ctx, ident, "dana", "  ")
    async with ctx.store.session() as db:
        erin = await by_name(db, Approver, "erin")
        erin.disabled = True
        db.add(erin)
    with pytest.raises(Refused, match="approver erin is disabled"):
        await breakglass.review(ctx, ident, "erin", "all good")
    assert len(await events(ctx, "breakglass.review_refused")) == 5
    assert await events(ctx, "grant.reviewed") == []
    assert [r.grant.id for r in await breakglass.unreviewed(ctx)] == [ident]


async def test_the_technician_cannot_review_their_own_break_glass(ctx: Context) -> None:
    await Directory(ctx, "test").add_approver("alice", "alice@vendor.example", [])
    grant = await breakglass.open_breakglass(ctx, "alice", "pump-7", timedelta(minutes=10),
                                             REASON, "cli:oncall")
    with pytest.raises(Refused, match="alice is the technician of grant"):
        await breakglass.review(ctx, grant.id or 0, "alice", "I fixed it")


# --- command line --------------------------------------------------------------------------

def setup_cli(cli: Cli, tmp_path: Path) -> None:
    key = tmp_path / "alice.pub"
    key.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode())
    results = [cli("tech", "add", "alice", "--vendor", "Roche Diagnostics", "--key", str(key)),
               cli("approver", "add", "dana", "--email", "dana@hospital.example"),
               cli("device", "add", "pump-7", "--host", "127.0.0.1", "--user", "svc",
                   "--password-env", "PW", env={"PW": "secret"}),
               cli("device", "add", "old-pump", "--host", "127.0.0.1", "--user", "svc",
                   "--password-env", "PW", env={"PW": "secret"}),
               cli("device", "retire", "old-pump")]
    for result in results:
        assert result.code == 0, result.err


def one_error_line(result: Any, code: int, *needles: str) -> str:
    assert result.code == code, (result.code, result.out, result.err)
    [line] = result.err_lines
    assert line.startswith("broker: ") and "Traceback" not in result.err
    for needle in needles:
        assert needle in line, line
    return str(line)


@pytest.mark.timeout(300)  # some dozens of CLI start-ups on a loaded host
def test_cli_breakglass_review_and_unreviewed_listing(cli: Cli, tmp_path: Path) -> None:
    setup_cli(cli, tmp_path)
    opened = cli("breakglass", "--tech", "alice", "--device", "pump-7", "--for", "30m",
                 "--reason", REASON, "--json")
    assert opened.code == 0, opened.err
    grant = json.loads(opened.out)
    assert grant["breakglass"] is True and grant["state"] == "active"
    assert grant["review"] == "open" and grant["breakglass_reason"] == REASON
    assert grant["request"] is None
    ident = str(grant["id"])
    listed, unreviewed, shown, human = cli.many([
        ("grant", "list"), ("grant", "list", "--unreviewed", "--json"), ("grant", "show", ident),
        ("breakglass", "--tech", "alice", "--device", "pump-7", "--for", "5m", "--reason",
         "second urgent pump fix")])
    assert "BREAK-GLASS, REVIEW OPEN" in listed.out
    assert [g["id"] for g in json.loads(unreviewed.out)] == [grant["id"]]
    assert "break-glass: yes" in shown.out and f"reason:      {REASON}" in shown.out
    assert "review:      OPEN" in shown.out
    assert human.code == 0 and human.out.startswith("BREAK-GLASS grant ")
    second = human.out.split()[2]

    reviewed = cli("grant", "review", ident, "--as", "dana", "--comment", "checked the cast",
                   "--json")
    assert reviewed.code == 0, reviewed.err
    assert json.loads(reviewed.out)["reviewed_by"] == "dana"
    after, shown, again = cli.many([
        ("grant", "list", "--unreviewed", "--json"), ("grant", "show", ident),
        ("grant", "review", ident, "--as", "dana", "--comment", "again")])
    audit = cli("audit", "export", "--format", "jsonl")  # after the refusal is written
    assert [str(g["id"]) for g in json.loads(after.out)] == [second]
    assert "review:      done by dana at " in shown.out and "checked the cast" in shown.out
    one_error_line(again, 1, f"grant {ident} was already reviewed by dana")
    kinds = [json.loads(line)["kind"] for line in audit.out.splitlines()]
    assert kinds.count("grant.breakglass") == 2 and kinds.count("grant.reviewed") == 1
    assert kinds.count("breakglass.review_refused") == 1


@pytest.mark.timeout(300)  # some dozens of CLI start-ups on a loaded host
def test_cli_bad_paths_are_one_line_with_the_contract_exit_status(cli: Cli,
                                                                  tmp_path: Path) -> None:
    setup_cli(cli, tmp_path)
    (cli.dir / "policies" / "pumps.yaml").write_text(dedent("""
        policies:
          - name: lab-only
            devices: {names: [pump-7]}
            vendors: ["Roche Diagnostics"]
        """).lstrip())
    base = ("breakglass", "--tech", "alice", "--device", "pump-7", "--for")
    forbidden, unknown_tech, unknown_device, short, bad_duration, retired = cli.many([
        (*base, "30m", "--reason", REASON),
        ("breakglass", "--tech", "bob", "--device", "pump-7", "--for", "5m", "--reason", REASON),
        ("breakglass", "--tech", "alice", "--device", "nope", "--for", "5m", "--reason", REASON),
        (*base, "5m", "--reason", "urgent"),
        (*base, "forever", "--reason", REASON),
        ("breakglass", "--tech", "alice", "--device", "old-pump", "--for", "5m", "--reason",
         REASON)])
    one_error_line(forbidden, 1, "policy lab-only", "does not allow break-glass access to pump-7")
    one_error_line(unknown_tech, 1, "no technician named 'bob'")
    one_error_line(unknown_device, 1, "no device named 'nope'")
    one_error_line(short, 2, "--reason must say in at least 3 words")
    one_error_line(bad_duration, 2, "--for", "'forever' is not a duration")
    one_error_line(retired, 1, "device old-pump is retired")
    (cli.dir / "policies" / "pumps.yaml").unlink()
    over, missing_comment, normal = cli.many([
        (*base, "2h", "--reason", REASON),
        ("grant", "review", "1", "--as", "dana"),
        ("request", "create", "--tech", "alice", "--device", "pump-7", "--for", "1h",
         "--reason", "battery swap", "--json")])
    one_error_line(over, 1, "limits break-glass to 1h; --for 2h is longer")
    one_error_line(missing_comment, 2, "Missing option '--comment'")
    request = json.loads(normal.out)["id"]
    approved = cli("request", "approve", str(request), "--as", "dana", "--json")
    grant = str(json.loads(approved.out)["grant"])
    not_breakglass, no_such, non_approver = cli.many([
        ("grant", "review", grant, "--as", "dana", "--comment", "fine"),
        ("grant", "review", "99", "--as", "dana", "--comment", "fine"),
        ("grant", "review", grant, "--as", "alice", "--comment", "fine")])
    one_error_line(not_breakglass, 1, f"grant {grant} is not a break-glass grant")
    one_error_line(no_such, 1, "no grant with id 99")
    one_error_line(non_approver, 1, "no approver named 'alice'")
    listed = cli("grant", "list")
    assert "approved" in listed.out and "BREAK-GLASS" not in listed.out
    audit = cli("audit", "export", "--format", "jsonl")
    kinds = [json.loads(line)["kind"] for line in audit.out.splitlines()]
    assert kinds.count("breakglass.refused") == 6  # every refusal but the unparsable --for
    assert kinds.count("breakglass.review_refused") == 3
    assert "grant.breakglass" not in kinds
