"""A grant's whole life on a fake clock: approval, warnings at 5 and 1 minutes, the cut at
its end, a restart after the end. No sleeping: the scheduler waits on FakeClock deadlines."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncssh
import pytest

from broker.domain.protocols import Protocol
from broker.revocation.registry import LiveSessions
from broker.revocation.scheduler import WINDOW_CLOSED, Scheduler
from broker.services.access_session import AccessSession
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.grants import Grants, check_access
from broker.services.requests import Requests
from broker.services.setup import initialise, migrate_database
from broker.store.models import Device
from broker.testing import FakeClock, MemoryEndpoint

START = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


@dataclass(eq=False)
class Live:
    """A real access session with an in-memory protocol side."""

    session: AccessSession
    endpoint: MemoryEndpoint

    @property
    def warnings(self) -> list[str]:
        return self.endpoint.notices

    @property
    def ended(self) -> str | None:
        return self.endpoint.cuts[0] if self.endpoint.cuts else None


async def open_live(ctx: Context, sessions: LiveSessions,
                    scheduler: Scheduler | None = None) -> Live:
    """alice's SSH session on pump-7, opened (row, recording, registry) as a protocol does
    (telling ``scheduler`` of it, as the SSH server does)."""
    endpoint = MemoryEndpoint()
    session = AccessSession(ctx, sessions, endpoint, technician="alice", device="pump-7",
                            client="127.0.0.1:50000", protocol="ssh",
                            on_open=scheduler.session_opened if scheduler else None)
    endpoint.session = session
    access = await session.check(Protocol.SSH)
    assert access.allowed, access.decision.detail
    await session.open(access, "shell")
    assert session in list(sessions)
    return Live(session, endpoint)


async def make_context(tmp_path: Path, clock: FakeClock) -> Context:
    config = initialise(tmp_path)
    await migrate_database(config.database_url)
    ctx = Context.open(config, clock=clock)
    directory = Directory(ctx, "test")
    key = asyncssh.generate_private_key("ssh-ed25519")
    await directory.add_technician("alice", "B. Braun", [key])
    await directory.add_approver("dana", "dana@hospital.example", ["biomed"])
    await directory.add_device(Device(name="pump-7", host="127.0.0.1", port=22,
                                      login_user="service"), "password", b"secret")
    return ctx


async def approved_grant(ctx: Context, minutes: int = 10) -> int:
    request = await Requests(ctx, "test").create("alice", "pump-7", timedelta(minutes=minutes),
                                                 "battery check")
    decision = await Requests(ctx, "approver:dana").decide(request.id or 0, "dana", True)
    assert decision.grant is not None
    return decision.grant.id or 0


async def settle(clock: FakeClock) -> None:
    """Let the scheduler finish its round and go back to sleep."""
    await asyncio.sleep(0)
    async with asyncio.timeout(5):
        await clock.wait_for_sleepers(1)


async def test_warnings_then_cut_exactly_at_the_end(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    grant = await approved_grant(ctx, minutes=10)
    sessions = LiveSessions()
    session = await open_live(ctx, sessions)
    scheduler = Scheduler(ctx, sessions)
    task = asyncio.create_task(scheduler.run())
    try:
        await settle(clock)
        assert clock.next_deadline == START + timedelta(minutes=5)
        clock.set(START + timedelta(minutes=5))
        await settle(clock)
        assert session.warnings == ["your access window closes in 5 minutes (at 09:10:00 UTC)"]
        clock.set(START + timedelta(minutes=9))
        await settle(clock)
        assert session.warnings[-1].startswith("your access window closes in 1 minute ")
        assert session.ended is None
        clock.set(START + timedelta(minutes=10) - timedelta(microseconds=1))
        await settle(clock)
        assert session.ended is None
        clock.set(START + timedelta(minutes=10))
        await settle(clock)
        assert session.ended == WINDOW_CLOSED
        shown = await Grants(ctx, "test").show(grant)
        assert shown.grant.state == "expired"
    finally:
        task.cancel()
        await ctx.close()


async def test_at_the_end_a_session_with_another_open_grant_goes_on(tmp_path: Path) -> None:
    """The fast path cuts on one query only where no other grant is open for the pair."""
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    await approved_grant(ctx, minutes=10)
    await approved_grant(ctx, minutes=20)  # a second, longer grant for alice on pump-7
    sessions = LiveSessions()
    kept = await open_live(ctx, sessions)
    scheduler = Scheduler(ctx, sessions)
    task = asyncio.create_task(scheduler.run())
    try:
        await settle(clock)
        clock.set(START + timedelta(minutes=10))
        await settle(clock)
        assert kept.ended is None
        clock.set(START + timedelta(minutes=20))
        await settle(clock)
        assert kept.ended == WINDOW_CLOSED
    finally:
        task.cancel()
        await ctx.close()


class CountingScheduler(Scheduler):
    rounds = 0
    replan_in_round = False  # the first round is told of a change while it runs

    async def tick(self) -> datetime:
        self.rounds += 1
        if self.replan_in_round and self.rounds == 1:
            self.replan()
        return await super().tick()


async def rounds_reach(scheduler: CountingScheduler, count: int, clock: FakeClock) -> None:
    async with asyncio.timeout(5):
        while scheduler.rounds < count:
            await asyncio.sleep(0.01)
    await settle(clock)


async def test_a_session_opened_later_gets_its_warning_and_openings_cost_no_round(
        tmp_path: Path) -> None:
    """The scheduler sleeps until the grant's end; a session that opens then needs a round
    (its first warning comes sooner), a second one on the same grant does not."""
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    await approved_grant(ctx, minutes=10)
    sessions = LiveSessions()
    scheduler = CountingScheduler(ctx, sessions)
    task = asyncio.create_task(scheduler.run())
    try:
        await settle(clock)
        assert clock.next_deadline == START + timedelta(minutes=10)
        first = await open_live(ctx, sessions, scheduler)
        await rounds_reach(scheduler, 2, clock)
        assert clock.next_deadline == START + timedelta(minutes=5)
        second = await open_live(ctx, sessions, scheduler)
        await asyncio.sleep(0.2)
        assert scheduler.rounds == 2  # nothing falls due before the round already planned
        clock.set(START + timedelta(minutes=5))
        await settle(clock)
        assert first.warnings == second.warnings == [
            "your access window closes in 5 minutes (at 09:10:00 UTC)"]
    finally:
        task.cancel()
        await ctx.close()


async def test_a_change_while_a_round_runs_is_not_lost(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    scheduler = CountingScheduler(ctx, LiveSessions())
    scheduler.replan_in_round = True
    task = asyncio.create_task(scheduler.run())
    try:
        await rounds_reach(scheduler, 2, clock)
        await asyncio.sleep(0.2)
        assert scheduler.rounds == 2
    finally:
        task.cancel()
        await ctx.close()


async def test_revocation_replans_and_cuts(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    grant = await approved_grant(ctx)
    sessions = LiveSessions()
    session = await open_live(ctx, sessions)
    await Grants(ctx, "test").revoke(grant, "incident")
    assert await sessions.recheck() == 1
    assert session.ended is not None and "revoked" in session.ended
    await ctx.close()


async def test_a_clock_jump_past_the_end_expires_the_grant(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    await approved_grant(ctx, minutes=10)
    sessions = LiveSessions()
    session = await open_live(ctx, sessions)
    task = asyncio.create_task(Scheduler(ctx, sessions).run())
    try:
        await settle(clock)
        clock.set(START + timedelta(hours=3))  # e.g. the host resumed from suspend
        await settle(clock)
        assert session.ended is not None
        assert session.warnings == []  # no stale "5 minutes left" after the end
    finally:
        task.cancel()
        await ctx.close()


async def test_restart_after_the_end_gives_no_access(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    await approved_grant(ctx, minutes=10)
    await ctx.close()
    clock.set(START + timedelta(minutes=30))  # the broker was down across the end
    restarted = Context.open(ctx.config, clock=clock)
    access = await check_access(restarted, "alice", "pump-7", Protocol.SSH)
    assert not access.allowed and access.decision.refusal == "expired"
    await restarted.close()


@pytest.mark.parametrize("minutes", [1, 3])
async def test_short_grants_get_only_the_warnings_that_fit(tmp_path: Path, minutes: int) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    await approved_grant(ctx, minutes=minutes)
    sessions = LiveSessions()
    session = await open_live(ctx, sessions)
    task = asyncio.create_task(Scheduler(ctx, sessions).run())
    try:
        await settle(clock)
        while session.ended is None:
            deadline = clock.next_deadline
            assert deadline is not None
            clock.set(deadline)
            await settle(clock)
        assert not any("5 minutes" in w for w in session.warnings)
        assert sum("1 minute " in w for w in session.warnings) == 1
    finally:
        task.cancel()
        await ctx.close()


async def test_a_scheduled_grant_activates_at_its_start_and_only_then(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    opens = START + timedelta(hours=2)
    request = await Requests(ctx, "test").create("alice", "pump-7", timedelta(minutes=30),
                                                 "planned service", start=opens)
    decision = await Requests(ctx, "approver:dana").decide(request.id or 0, "dana", True)
    assert decision.grant is not None and decision.grant.state == "scheduled"
    grant = decision.grant.id or 0
    task = asyncio.create_task(Scheduler(ctx, LiveSessions()).run())
    try:
        await settle(clock)
        while clock.now() < opens:  # wake-ups (capped at 10 min each) never open it early
            assert (await Grants(ctx, "test").show(grant)).grant.state == "scheduled"
            deadline = clock.next_deadline
            assert deadline is not None and deadline <= opens
            clock.set(deadline)
            await settle(clock)
        assert (await Grants(ctx, "test").show(grant)).grant.state == "active"
        wake = clock.next_deadline
        assert wake is not None and opens < wake <= opens + timedelta(minutes=30)
    finally:
        task.cancel()
        await ctx.close()
