"""The notifier: follows the audit chain into an outbox, and delivers the outbox.

* :meth:`Notifier.plan_new_events` runs in one transaction that first locks the cursor row
  (PostgreSQL ``FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` serialises anyway): it records
  ``grant.ending_soon`` once per grant five minutes before its end, reads the events after the
  cursor, inserts their deliveries and moves the cursor on. Several nodes never plan twice.
* :meth:`Notifier.deliver_due` claims due rows with a lease (``FOR UPDATE SKIP LOCKED`` on
  PostgreSQL), delivers them outside any transaction, and records the outcome: sent, or another
  attempt after an exponential backoff, or after the last attempt ``failed`` with a
  ``notification.failed`` audit event. A node that dies mid-delivery leaves a lease that runs
  out, and another node retries. Nothing here ever runs inside a user's request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import jinja2
import structlog
from sqlmodel import col, func, or_, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker import metrics
from broker.approvals import links
from broker.approvals.notify.channels import (
    DeliveryError,
    build_mail,
    load_webhook_secret,
    post_webhook,
    send_mail,
    webhook_secret_path,
)
from broker.approvals.notify.plan import EMAIL, WEBHOOK, plan
from broker.approvals.notify.render import TemplateProblem, environment, render_email
from broker.domain.durations import parse_duration
from broker.domain.grants import WARN_MINUTES_BEFORE_END
from broker.domain.requests import RequestState
from broker.errors import BrokerError
from broker.services.context import Context
from broker.services.groups import group_source
from broker.store.models import AccessRequest, AuditEvent, Grant, Notification, NotificationCursor

log = structlog.get_logger("broker.notify")
CURSOR = "notify"
ENDING_SOON = timedelta(minutes=WARN_MINUTES_BEFORE_END[0])
LEASE = timedelta(minutes=2)
POLL_SECONDS = 1.0
BATCH = 200
PURGE_EVERY = 300  # polls between purges of spent approval-link ids


@dataclass(frozen=True)
class Outcome:
    notification_id: int
    error: str | None  # None: delivered
    link: links.IssuedLink | None = None
    dropped: str | None = None  # delivered on purpose to nobody, and why


class Notifier:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.settings = ctx.config.settings.notify
        self._templates: jinja2.Environment | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- the loop -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled: plan new events, deliver what is due, once a second."""
        polls = 0
        try:
            while True:
                try:
                    await self.plan_new_events()
                    await self.deliver_due()
                    if polls % PURGE_EVERY == 0:
                        await links.purge_spent(self.ctx)
                except Exception as exc:  # keep notifying after a bad round (database blip)
                    log.error("notification round failed", error=str(exc))
                polls += 1
                await asyncio.sleep(POLL_SECONDS)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- planning -------------------------------------------------------------------------------
    async def plan_new_events(self) -> int:
        """Turn audit events after the cursor into outbox rows; returns how many rows."""
        policies = self.ctx.policies()
        public_url = self.ctx.config.settings.broker.public_url
        planned = 0
        async with self.ctx.store.session() as db:
            cursor = await self._lock_cursor(db)
            await self._record_ending_soon(db)
            events = (await db.exec(select(AuditEvent).where(AuditEvent.seq > cursor.seq)
                                    .order_by(col(AuditEvent.seq)).limit(BATCH))).all()
            now = self.ctx.now()
            for event in events:
                for delivery in await plan(db, event, self.settings, policies, public_url,
                                           group_source(self.ctx)):
                    db.add(Notification(
                        event_seq=event.seq, kind=event.kind, channel=delivery.channel,
                        recipient=delivery.recipient, next_attempt_at=now, created_at=now,
                        payload=json.dumps(delivery.payload, sort_keys=True, default=str)))
                    planned += 1
            if events:
                cursor.seq = events[-1].seq
                db.add(cursor)
        return planned

    async def _lock_cursor(self, db: AsyncSession) -> NotificationCursor:
        query = select(NotificationCursor).where(NotificationCursor.name == CURSOR)
        cursor = (await db.exec(query.with_for_update())).first()
        if cursor is None:  # a database the migration did not seed: start at the head
            head = (await db.exec(select(func.max(col(AuditEvent.seq))))).one() or 0
            cursor = NotificationCursor(name=CURSOR, seq=head)
            db.add(cursor)
            await db.flush()
        return cursor

    async def _record_ending_soon(self, db: AsyncSession) -> None:
        now = self.ctx.now()
        grants = (await db.exec(select(Grant).where(
            Grant.state == "active", Grant.start <= now, Grant.end > now,
            Grant.end <= now + ENDING_SOON))).all()
        if not grants:
            return
        subjects = [f"grant:{g.id}" for g in grants]
        warned = set((await db.exec(select(AuditEvent.subject).where(
            AuditEvent.kind == "grant.ending_soon",
            col(AuditEvent.subject).in_(subjects)))).all())
        for grant in grants:
            if f"grant:{grant.id}" not in warned:
                minutes = max(1, round((grant.end - now).total_seconds() / 60))
                await self.ctx.audit(db, "grant.ending_soon", "broker", f"grant:{grant.id}",
                                     end=grant.end.isoformat(), minutes=minutes)

    # -- delivering -----------------------------------------------------------------------------
    async def deliver_due(self) -> int:
        """Deliver every due row (once each); returns how many were attempted."""
        rows = await self._claim()
        if not rows:
            return 0
        by_recipient: dict[tuple[str, str], list[Notification]] = {}
        for row in rows:
            by_recipient.setdefault((row.channel, row.recipient), []).append(row)

        async def in_order(queue: list[Notification]) -> list[Outcome]:
            return [await self._deliver(row) for row in queue]

        done = await asyncio.gather(*(in_order(queue) for queue in by_recipient.values()))
        await self._record([outcome for outcomes in done for outcome in outcomes])
        return len(rows)

    async def _claim(self) -> list[Notification]:
        now = self.ctx.now()
        async with self.ctx.store.session() as db:
            query = (select(Notification)
                     .where(Notification.state == "pending", Notification.next_attempt_at <= now,
                            or_(col(Notification.lease_until).is_(None),
                                col(Notification.lease_until) <= now))
                     .order_by(col(Notification.id)).limit(50))
            if db.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = list((await db.exec(query)).all())
            for row in rows:
                row.lease_until, row.leased_by = now + LEASE, self.ctx.node
                db.add(row)
        return rows

    async def _deliver(self, row: Notification) -> Outcome:
        assert row.id is not None
        try:
            if row.channel == WEBHOOK:
                await self._post(row)
                return Outcome(row.id, None)
            if row.channel == EMAIL:
                return await self._mail(row)
            return Outcome(row.id, f"unknown channel {row.channel!r}")
        except (DeliveryError, TemplateProblem, BrokerError) as exc:
            return Outcome(row.id, str(exc))
        except Exception as exc:  # a bug must not stop the other deliveries
            log.exception("notification delivery crashed", notification=row.id)
            return Outcome(row.id, f"internal error: {type(exc).__name__}")

    async def _post(self, row: Notification) -> None:
        secret = load_webhook_secret(webhook_secret_path(self.ctx.config))
        if self._http is None:
            self._http = aiohttp.ClientSession()
        await post_webhook(
            self._http, row.recipient, secret, row.payload.encode(),
            timestamp=int(self.ctx.now().timestamp()), event=row.kind, delivery=row.id or 0,
            timeout=parse_duration(self.settings.webhook_timeout).total_seconds())

    async def _mail(self, row: Notification) -> Outcome:
        assert row.id is not None
        payload: dict[str, Any] = json.loads(row.payload)
        values: dict[str, Any] = {"facts": payload["facts"], "to_name": payload["to_name"],
                                  "link": None, "link_expires": None}
        link = None
        if payload.get("link_for"):
            request_id = int(payload["facts"]["request"]["id"])
            state = await self._request_state(request_id)
            if state != RequestState.PENDING:
                return Outcome(row.id, None, dropped=f"request {request_id} is {state}:"
                                                     " no link sent")
            link = links.issue(self.ctx, links.web_secret(self.ctx.config), request_id,
                               payload["link_for"])
            values.update(link=link.url, link_expires=link.claims.expires_at.isoformat())
        subject, body = render_email(self._env(), row.kind, values)
        message = build_mail(self.settings, row.recipient, payload["to_name"], subject, body)
        await send_mail(self.settings, message,
                        parse_duration(self.settings.smtp_timeout).total_seconds())
        return Outcome(row.id, None, link=link)

    async def _request_state(self, request_id: int) -> str:
        async with self.ctx.store.session() as db:
            request = await db.get(AccessRequest, request_id)
            return links.effective_state(request, self.ctx.now()) if request else "gone"

    def _env(self) -> jinja2.Environment:
        if self._templates is None:
            custom = self.ctx.config.path(self.settings.templates_dir)
            self._templates = environment(custom if custom.is_dir() else None)
        return self._templates

    async def _record(self, outcomes: Sequence[Outcome]) -> None:
        now = self.ctx.now()
        async with self.ctx.store.session() as db:
            for outcome in outcomes:
                row = await db.get(Notification, outcome.notification_id)
                if row is None or row.leased_by != self.ctx.node or row.state != "pending":
                    continue
                row.attempts += 1
                row.lease_until = row.leased_by = None
                if outcome.error is None:
                    row.state, row.sent_at = ("dropped", now) if outcome.dropped else ("sent", now)
                    row.last_error = outcome.dropped
                    if outcome.link is not None:
                        await links.record_issued(self.ctx, db, outcome.link, "broker",
                                                  via="email")
                elif row.attempts >= self.settings.max_attempts:
                    metrics.NOTIFICATION_FAILURES.labels(row.channel, "true").inc()
                    row.state, row.last_error = "failed", outcome.error[:500]
                    await self.ctx.audit(db, "notification.failed", "broker",
                                         f"notification:{row.id}", channel=row.channel,
                                         recipient=row.recipient, event_seq=row.event_seq,
                                         event_kind=row.kind, attempts=row.attempts,
                                         error=outcome.error[:300])
                else:
                    metrics.NOTIFICATION_FAILURES.labels(row.channel, "false").inc()
                    row.last_error = outcome.error[:500]
                    row.next_attempt_at = now + self.backoff(row.attempts)
                    log.warning("notification attempt failed", notification=row.id,
                                channel=row.channel, attempt=row.attempts, error=outcome.error)
                db.add(row)

    def backoff(self, attempts: int) -> timedelta:
        """The wait after ``attempts`` failed attempts: retry_base doubling, up to retry_max."""
        base = parse_duration(self.settings.retry_base)
        ceiling = parse_duration(self.settings.retry_max)
        seconds = base.total_seconds() * 2.0 ** min(attempts - 1, 60)
        return timedelta(seconds=min(ceiling.total_seconds(), seconds))


async def outbox(ctx: Context, states: Sequence[str] | None = None) -> list[Notification]:
    """The outbox, oldest first (for ``broker`` checks and tests)."""
    async with ctx.store.session() as db:
        query = select(Notification).order_by(col(Notification.id))
        if states:
            query = query.where(col(Notification.state).in_(list(states)))
        return list((await db.exec(query)).all())

