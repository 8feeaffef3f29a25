"""Notifications: the audit chain planned into an outbox exactly once, webhooks signed and
retried with backoff against a real aiohttp receiver, e-mails (with each approver's personal
link) received by a real aiosmtpd server, admin templates, and failure after the last retry."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from sqlmodel import col, func, select

from broker.approvals import links
from broker.approvals.notify import Notifier
from broker.approvals.notify.dispatcher import outbox
from broker.approvals.tokens import verify
from broker.config import load_config
from broker.services.context import Context
from broker.services.grants import refresh_states
from broker.services.requests import Requests
from broker.store.models import AuditEvent, NotificationCursor
from broker.testing import FakeClock
from tests.approval_kit import (
    Mailbox,
    body_text,
    events,
    file_request,
    set_config,
    smtp_server,
    staff_and_device,
    two_group_policy,
)


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@dataclass
class Receiver:
    answers: list[int]
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    delay: float = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.calls.append((dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        status = self.answers.pop(0) if self.answers else 200
        return web.Response(status=status, text="ok" if status < 300 else "down")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    hook = Receiver(answers=[])
    app = web.Application()
    app.router.add_post("/hook", hook.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield hook, str(server.make_url("/hook"))
    finally:
        await server.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def open_ctx(broker_dir: Path, clock: FakeClock, node: str = "node-1") -> Context:
    ctx = Context.open(load_config(broker_dir / "broker.toml"), clock=clock)
    ctx.node = node
    return ctx


async def test_a_new_request_mails_each_eligible_approver_their_own_link(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    two_group_policy(broker_dir)
    set_config(broker_dir, "notify", smtp_host="127.0.0.1", smtp_port=port,
               mail_from="broker@hospital.example")
    ctx = await open_ctx(broker_dir, clock)
    notifier = Notifier(ctx)
    try:
        await staff_and_device(ctx)
        assert await notifier.plan_new_events() == 0  # people and devices notify nobody
        ident = await file_request(ctx)
        assert await notifier.plan_new_events() == 2
        assert await notifier.deliver_due() == 2
        # bob (biomed) and carol (security) may decide; dave (radiology) may not, nor mallory,
        # who shares alice's e-mail address
        assert sorted(str(m["To"]) for m in mailbox.messages) == [
            "bob <bob@hospital.example>", "carol <carol@hospital.example>"]
        secret = links.web_secret(ctx.config)
        for name in ("bob", "carol"):
            (message,) = mailbox.to(f"{name}@hospital.example")
            assert message["From"] == "broker@hospital.example"
            assert message["Subject"] == (f"Access request {ident}: alice on pump1 needs your"
                                          " decision")
            text = body_text(message)
            assert f"Hello {name}," in text and "replace drug library 4.2" in text
            assert "Alaris 8015, firmware 12.1.3" in text and "ICU" in text
            urls = re.findall(r"https://broker\.test:8443/approve/(\S+)", text)
            assert len(urls) == 1
            claims = verify(secret, urls[0], clock.now())
            assert (claims.approver, claims.request_id) == (name, ident)
        issued = await events(ctx, "approval.link_issued")
        assert sorted(d["approver"] for _, _, d in issued) == ["bob", "carol"]
        assert {d["via"] for _, _, d in issued} == {"email"}
        assert [r.state for r in await outbox(ctx)] == ["sent", "sent"]
        # nothing is sent twice
        assert await notifier.plan_new_events() == 0
        assert await notifier.deliver_due() == 0
    finally:
        await notifier.close()
        await ctx.close()


async def test_webhook_is_signed_and_retried_with_backoff(
        broker_dir: Path, clock: FakeClock, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    hook.answers = [500, 503, 200]
    set_config(broker_dir, "notify", webhook_url=url, retry_base="10s", retry_max="1h")
    ctx = await open_ctx(broker_dir, clock)
    notifier = Notifier(ctx)
    try:
        await staff_and_device(ctx)
        ident = await file_request(ctx)
        assert await notifier.plan_new_events() == 1
        assert await notifier.deliver_due() == 1
        (row,) = await outbox(ctx)
        assert (row.state, row.attempts, row.last_error) == ("pending", 1,
                                                             "webhook answered HTTP 500")
        assert row.next_attempt_at == clock.now() + timedelta(seconds=10)
        assert await notifier.deliver_due() == 0  # not due yet
        clock.advance(timedelta(seconds=10))
        assert await notifier.deliver_due() == 1
        (row,) = await outbox(ctx)
        assert row.attempts == 2 and row.next_attempt_at == clock.now() + timedelta(seconds=20)
        clock.advance(timedelta(seconds=19))
        assert await notifier.deliver_due() == 0
        clock.advance(timedelta(seconds=1))
        assert await notifier.deliver_due() == 1
        (row,) = await outbox(ctx)
        assert (row.state, row.attempts) == ("sent", 3)
        assert len(hook.calls) == 3
        secret = (broker_dir / "data" / "webhook.key").read_text().strip().encode()
        for headers, body in hook.calls:
            expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
            assert hmac.compare_digest(headers["X-Broker-Signature"], expected)
            assert headers["X-Broker-Event"] == "request.created"
            assert headers["Content-Type"] == "application/json"
            assert abs(int(headers["X-Broker-Timestamp"]) - clock.now().timestamp()) < 60
        tampered = hook.calls[0][1].replace(b"alice", b"eve")
        assert hmac.new(secret, tampered, hashlib.sha256).hexdigest() not in \
            hook.calls[0][0]["X-Broker-Signature"]
        payload = json.loads(hook.calls[-1][1])
        assert payload["event"]["kind"] == "request.created"
        assert payload["request"]["id"] == ident and payload["request"]["state"] == "pending"
        assert payload["technician"] == {"name": "alice", "vendor": "BD"}
        assert payload["device"]["name"] == "pump1"
        assert "email" not in json.dumps(payload)  # no addresses leave by webhook
    finally:
        await notifier.close()
        await ctx.close()


async def test_the_last_failed_attempt_is_audited(
        broker_dir: Path, clock: FakeClock, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    hook.answers = [500] * 10
    set_config(broker_dir, "notify", webhook_url=url, retry_base="5s", max_attempts=3)
    ctx = await open_ctx(broker_dir, clock)
    notifier = Notifier(ctx)
    try:
        await staff_and_device(ctx)
        await file_request(ctx)
        await notifier.plan_new_events()
        for _ in range(3):
            assert await notifier.deliver_due() == 1
            clock.advance(timedelta(minutes=5))
        assert await notifier.deliver_due() == 0
        (row,) = await outbox(ctx)
        assert (row.state, row.attempts) == ("failed", 3)
        (failed,) = await events(ctx, "notification.failed")
        assert failed[1] == f"notification:{row.id}"
        assert failed[2]["channel"] == "webhook" and failed[2]["attempts"] == 3
        assert failed[2]["error"] == "webhook answered HTTP 500"
        assert failed[2]["event_kind"] == "request.created"
        # the failure itself notifies nobody (no loop)
        assert await notifier.plan_new_events() == 0
    finally:
        await notifier.close()
        await ctx.close()


async def test_a_hanging_webhook_times_out(broker_dir: Path, clock: FakeClock,
                                           receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    hook.delay = 10
    set_config(broker_dir, "notify", webhook_url=url, webhook_timeout="1s")
    ctx = await open_ctx(broker_dir, clock)
    notifier = Notifier(ctx)
    try:
        await staff_and_device(ctx)
        started = time.monotonic()
        await file_request(ctx)
        assert time.monotonic() - started < 5  # filing a request never waits on a receiver
        await notifier.plan_new_events()
        started = time.monotonic()
        await notifier.deliver_due()
        assert time.monotonic() - started < 5
        (row,) = await outbox(ctx)
        assert row.state == "pending" and "TimeoutError" in (row.last_error or "")
    finally:
        await notifier.close()
        await ctx.close()


async def test_the_technician_hears_of_every_decision_and_of_the_window(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    two_group_policy(broker_dir)
    set_config(broker_dir, "notify", smtp_host="127.0.0.1", smtp_port=port)
    ctx = await open_ctx(broker_dir, clock)
    notifier = Notifier(ctx)
    try:
        await staff_and_device(ctx)
        ident = await file_request(ctx)
        await Requests(ctx, "approver:bob").decide(ident, "bob", True, "fine by biomed")
        await notifier.plan_new_events()
        await Requests(ctx, "approver:carol").decide(ident, "carol", True)
        await notifier.plan_new_events()
        await notifier.deliver_due()
        subjects = [str(m["Subject"]) for m in mailbox.to("alice@bd.example")]
        assert subjects == [
            f"Request {ident}: bob approved; more approvals needed",
            f"Request {ident} approved: access to pump1 until 2026-01-05 10:00 UTC"]
        assert "fine by biomed" in body_text(mailbox.to("alice@bd.example")[0])

        clock.advance(timedelta(minutes=56))
        for _ in range(2):
            await notifier.plan_new_events()
        warned = await events(ctx, "grant.ending_soon")
        assert len(warned) == 1 and warned[0][2]["minutes"] == 4
        await notifier.deliver_due()
        assert str(mailbox.messages[-1]["Subject"]) == \
            "Access to pump1 closes at 2026-01-05 10:00 UTC"
        assert "closes in about 4 minutes" in " ".join(body_text(mailbox.messages[-1]).split())

        clock.advance(timedelta(minutes=5))
        await refresh_states(ctx)
        await notifier.plan_new_events()
        await notifier.deliver_due()
        assert str(mailbox.messages[-1]["Subject"]) == "Access to pump1 has ended"
        assert len(await events(ctx, "grant.ending_soon")) == 1
    finally:
        await notifier.close()
        await ctx.close()


async def test_breakglass_mails_every_approver(broker_dir: Path, clock: FakeClock,
                                               smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    set_config(broker_dir, "notify", smtp_host="127.0.0.1", smtp_port=port)
    ctx = await open_ctx(broker_dir, clock)
    notifier = Notifier(ctx)
    try:
        await staff_and_device(ctx)
        ident = await file_request(ctx)
        decision = await Requests(ctx, "approver:bob").decide(ident, "bob", True)
        assert decision.grant is not None
        await notifier.plan_new_events()
        await notifier.deliver_due()
        mailbox.messages.clear()
        async with ctx.store.session() as db:  # as the break-glass feature records it
            await ctx.audit(db, "grant.breakglass", "cli:admin", f"grant:{decision.grant.id}",
                            reason="pump alarms on ward 4")
        await notifier.plan_new_events()
        await notifier.deliver_due()
        to = sorted(str(m["To"]).split("<")[1].rstrip(">").lower() for m in mailbox.messages)
        assert to == ["alice@bd.example", "bob@hospital.example", "carol@hospital.example",
                      "dave@hospital.example"]  # mallory's address is alice@bd.example
        assert all(str(m["Subject"]).startswith("BREAK-GLASS: alice on pump1")
                   for m in mailbox.messages)
        assert "pump alarms on ward 4" in body_text(mailbox.messages[0])
    finally:
        await notifier.close()
        await ctx.close()


async def test_admin_templates_replace_the_shipped_ones(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    set_config(broker_dir, "notify", smtp_host="127.0.0.1", smtp_port=port, retry_base="1m")
    custom = broker_dir / "notify-templates"
    custom.mkdir()
    (custom / "request.created.txt").write_text(
        "Subject: [ICU] {{ facts.technician.name }} wants {{ facts.device.name }}\n\n"
        "Decide here: {{ link }}\n")
    (custom / "request.denied.txt").write_text("no subject line here\n")
    ctx = await open_ctx(broker_dir, clock)
    notifier = Notifier(ctx)
    try:
        await staff_and_device(ctx)
        ident = await file_request(ctx)
        await notifier.plan_new_events()
        await notifier.deliver_due()
        await Requests(ctx, "approver:bob").decide(ident, "bob", False, via="link")
        await notifier.plan_new_events()
        await notifier.deliver_due()
        subjects = {str(m["Subject"]) for m in mailbox.messages}
        assert subjects == {"[ICU] alice wants pump1"}
        assert body_text(mailbox.messages[0]).startswith("Decide here: https://broker.test")
        broken = [r for r in await outbox(ctx) if r.kind == "request.denied"]
        assert len(broken) == 1 and broken[0].state == "pending"
        assert broken[0].last_error == ("request.denied.txt: the first line must be"
                                        " 'Subject: ...'")
    finally:
        await notifier.close()
        await ctx.close()


async def test_a_link_mail_for_a_request_decided_meanwhile_is_dropped(
        broker_dir: Path, clock: FakeClock, smtp: tuple[Mailbox, int]) -> None:
    mailbox, port = smtp
    set_config(broker_dir, "notify", smtp_host="127.0.0.1", smtp_port=port)
    ctx = await open_ctx(broker_dir, clock)
    notifier = Notifier(ctx)
    try:
        await staff_and_device(ctx)
        ident = await file_request(ctx)
        await notifier.plan_new_events()
        await Requests(ctx, "test").cancel(ident)
        await notifier.deliver_due()
        assert mailbox.messages == []
        assert {(r.state, r.last_error) for r in await outbox(ctx)} == {
            ("dropped", f"request {ident} is cancelled: no link sent")}
        assert await events(ctx, "approval.link_issued") == []
    finally:
        await notifier.close()
        await ctx.close()


async def test_the_webhook_secret_must_be_private(
        broker_dir: Path, clock: FakeClock, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    set_config(broker_dir, "notify", webhook_url=url)
    (broker_dir / "data" / "webhook.key").chmod(0o644)
    ctx = await open_ctx(broker_dir, clock)
    notifier = Notifier(ctx)
    try:
        await staff_and_device(ctx)
        await file_request(ctx)
        await notifier.plan_new_events()
        await notifier.deliver_due()
        (row,) = await outbox(ctx)
        assert row.state == "pending" and "(chmod 600)" in (row.last_error or "")
        assert hook.calls == []
    finally:
        await notifier.close()
        await ctx.close()


async def test_several_nodes_plan_and_deliver_each_event_once(
        broker_dir: Path, clock: FakeClock, receiver: tuple[Receiver, str]) -> None:
    hook, url = receiver
    set_config(broker_dir, "notify", webhook_url=url)
    nodes = [await open_ctx(broker_dir, clock, f"node-{i}") for i in range(3)]
    notifiers = [Notifier(ctx) for ctx in nodes]
    try:
        await staff_and_device(nodes[0])
        for _ in range(4):
            await file_request(nodes[0])
        planned = await asyncio.gather(*(n.plan_new_events() for n in notifiers))
        assert sum(planned) == 4
        delivered = await asyncio.gather(*(n.deliver_due() for n in notifiers))
        assert sum(delivered) == 4 and len(hook.calls) == 4
        assert sorted(json.loads(body)["request"]["id"] for _, body in hook.calls) == [1, 2, 3,
                                                                                        4]
        async with nodes[0].store.session() as db:
            head = (await db.exec(select(func.max(col(AuditEvent.seq))))).one()
            cursor = await db.get(NotificationCursor, "notify")
        assert cursor is not None and cursor.seq == head
        assert await asyncio.gather(*(n.plan_new_events() for n in notifiers)) == [0, 0, 0]
    finally:
        for notifier in notifiers:
            await notifier.close()
        for ctx in nodes:
            await ctx.close()


def test_backoff_doubles_up_to_the_ceiling(broker_dir: Path) -> None:
    set_config(broker_dir, "notify", retry_base="10s", retry_max="1m")
    notifier = Notifier(Context.open(load_config(broker_dir / "broker.toml")))
    assert [notifier.backoff(n).total_seconds() for n in range(1, 6)] == [10, 20, 40, 60, 60]
    assert notifier.backoff(500).total_seconds() == 60


def test_notify_config_errors_are_one_line(broker_dir: Path) -> None:
    from broker.errors import ConfigError

    for key, value, words in (("retry_base", "soon", "is not a duration"),
                              ("webhook_url", "ftp://x", "expected an http(s) URL"),
                              ("mail_from", "nobody", "expected an e-mail address")):
        set_config(broker_dir, "notify", **{key: value})
        with pytest.raises(ConfigError) as error:
            load_config(broker_dir / "broker.toml")
        assert f"[notify] {key}: " in str(error.value) and words in str(error.value)
        assert "\n" not in str(error.value)
        set_config(broker_dir, "notify", **{key: {"retry_base": "10s", "webhook_url": "",
                                                  "mail_from": "broker@localhost"}[key]})
    set_config(broker_dir, "approvals", link_ttl="30d")
    with pytest.raises(ConfigError, match=r"\[approvals\] link_ttl: '30d' is longer"):
        load_config(broker_dir / "broker.toml")
