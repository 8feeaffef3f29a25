"""Access requests and approver decisions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.audit.chain import lock_chain
from broker.domain.errors import DomainError
from broker.domain.grants import Window, check_device_grantable, state_at
from broker.domain.identity import same_mailbox
from broker.domain.policy import (
    Policy,
    Rules,
    approvals_satisfied,
    check_request,
    missing_approvals,
)
from broker.domain.protocols import Protocol
from broker.domain.requests import (
    RequestEvent,
    RequestState,
    check_decider,
    next_request_state,
    window_for,
)
from broker.domain.text import DECISION_COMMENT, REQUEST_REASON
from broker.domain.vendors import refusal_for
from broker.errors import Conflict, Refused, UsageError
from broker.services.context import Context
from broker.services.groups import (
    GroupSource,
    GroupsUnavailable,
    LocalGroups,
    Prefetched,
    group_source,
)
from broker.services.lookup import by_id, by_name
from broker.services.policies import applicable_rules, hours_text, inside_hours
from broker.services.text import free_text
from broker.services.vendors import state_of
from broker.store.models import (
    AccessRequest,
    Approval,
    Approver,
    Device,
    Grant,
    SamePerson,
    Technician,
    Vendor,
)


@dataclass
class RequestView:
    request: AccessRequest
    technician: Technician
    device: Device
    approvals: list[tuple[Approval, Approver]]
    grant: Grant | None


@dataclass
class Decision:
    request: AccessRequest
    grant: Grant | None
    still_needed: tuple[str, ...]


class Requests:
    def __init__(self, ctx: Context, actor: str) -> None:
        self.ctx, self.actor = ctx, actor

    async def create(self, tech_name: str, device_name: str, duration: timedelta, reason: str,
                     start: datetime | None = None,
                     protocols: frozenset[Protocol] | None = None) -> AccessRequest:
        reason = await free_text(self.ctx, self.actor, f"{tech_name}+{device_name}"[:200],
                                 REQUEST_REASON, reason)
        now = self.ctx.now()
        if start is not None and start.tzinfo is None:
            raise UsageError("--start needs a timezone, e.g. 2026-11-24T14:00:00+01:00")
        policies = self.ctx.policies()
        async with self.ctx.store.session() as db:
            tech = await by_name(db, Technician, tech_name)
            device = await by_name(db, Device, device_name)
            try:
                self._check_subjects(tech, device)
                vendor = (await db.get(Vendor, tech.vendor_id)
                          if tech.vendor_id is not None else None)
                refused = refusal_for(self.ctx.now(), state_of(vendor), tech.disabled,
                                      tech.expires_at)
                if refused is not None:
                    raise Refused(f"technician {tech.name}: {refused[1]}")
                policy_name, rules = applicable_rules(policies, tech, device)
                wanted = protocols if protocols is not None else rules.protocols
                violations = check_request(rules, duration, wanted)
                if violations:
                    raise Refused(f"policy {policy_name}: " + "; ".join(violations))
                if not inside_hours(rules, start or now):
                    raise Refused(f"policy {policy_name} allows access only {hours_text(rules)}")
            except Refused as refusal:
                await self.ctx.audit(db, "policy.denied", self.actor, f"{tech_name}+{device_name}",
                                     reason=str(refusal))
                await db.commit()
                raise
            assert tech.id is not None and device.id is not None
            request = AccessRequest(
                technician_id=tech.id, device_id=device.id, reason=reason,
                duration_s=int(duration.total_seconds()), requested_start=start,
                protocols=sorted(p.value for p in wanted), state=RequestState.PENDING.value,
                policy=policy_name, created_at=now, expires_at=now + rules.pending_expiry)
            db.add(request)
            await db.flush()
            await self.ctx.audit(db, "request.created", self.actor, f"request:{request.id}",
                                 technician=tech.name, device=device.name, reason=request.reason,
                                 duration_s=request.duration_s, protocols=request.protocols,
                                 policy=policy_name)
        return request

    @staticmethod
    def _check_subjects(tech: Technician, device: Device) -> None:
        if tech.disabled:
            raise Refused(f"technician {tech.name} is disabled")
        if device.state != "active":
            raise Refused(f"device {device.name} is {device.state}: it cannot be requested")

    async def find(self, state: str | None = None) -> list[RequestView]:
        await expire_pending(self.ctx)
        async with self.ctx.store.session() as db:
            query = select(AccessRequest).order_by(col(AccessRequest.id))
            if state:
                query = query.where(AccessRequest.state == state)
            rows = (await db.exec(query)).all()
            return [await _view(db, row) for row in rows]

    async def show(self, ident: int) -> RequestView:
        await expire_pending(self.ctx)
        async with self.ctx.store.session() as db:
            return await _view(db, await by_id(db, AccessRequest, ident))

    async def cancel(self, ident: int) -> AccessRequest:
        async with self.ctx.store.session() as db:
            request = await by_id(db, AccessRequest, ident)
            await self._transition(db, request, RequestEvent.CANCEL)
            await self.ctx.audit(db, "request.cancelled", self.actor, f"request:{ident}")
        return request

    async def decide(self, ident: int, approver_name: str, approve: bool,
                     comment: str | None = None, via: str = "cli",
                     within: Callable[[AsyncSession], Awaitable[None]] | None = None
                     ) -> Decision:
        """``within`` runs first in the decision's own transaction (an approval link spends
        its single-use token there, so that a replay can never decide twice)."""
        comment = await free_text(self.ctx, f"approver:{approver_name}"[:200],
                                  f"request:{ident}", DECISION_COMMENT, comment) or None
        await expire_pending(self.ctx)
        policies = self.ctx.policies()
        groups = await self._groups_before(ident, approver_name, policies, via)
        async with self.ctx.store.session() as db:
            if within is not None:
                await within(db)
            request = await by_id(db, AccessRequest, ident)
            approver = await by_name(db, Approver, approver_name)
            tech = await db.get(Technician, request.technician_id)
            device = await db.get(Device, request.device_id)
            assert tech is not None and device is not None
            subject = f"request:{ident}"
            try:
                decision = await self._decide(db, request, approver, tech, device, policies,
                                              approve, comment, via, groups)
            except SelfApproval as refusal:
                await self.ctx.audit(db, "approval.refused", f"approver:{approver_name}",
                                     subject, reason="self-approval", detail=str(refusal),
                                     technician=tech.name, via=via)
                await db.commit()
                raise
            except GroupsUnavailable as refusal:
                await self.ctx.audit(db, "decision.refused", f"approver:{approver_name}", subject,
                                     reason=str(refusal), via=via, directory=groups.where)
                await db.commit()
                raise
            except (Refused, Conflict) as refusal:
                await self.ctx.audit(db, "decision.refused", f"approver:{approver_name}", subject,
                                     reason=str(refusal), via=via)
                await db.commit()
                raise
        return decision

    async def _groups_before(self, ident: int, approver_name: str, policies: list[Policy],
                             via: str) -> GroupSource:
        """The directory asked before the decision's transaction, when the policy names
        groups: a refusal for want of an answer is audited here, and an approval link's token
        is not spent on it (the link works again once the directory answers)."""
        source = group_source(self.ctx)
        if isinstance(source, LocalGroups):
            return source
        async with self.ctx.store.session() as db:
            request = await by_id(db, AccessRequest, ident)
            approver = await by_name(db, Approver, approver_name)
            tech = await db.get(Technician, request.technician_id)
            device = await db.get(Device, request.device_id)
            assert tech is not None and device is not None
            try:
                _, rules = applicable_rules(policies, tech, device)
            except Refused:
                return source  # refused (and audited) in the decision's transaction
            if not any(rule.groups for rule in rules.approvals):
                return source
            approved = (await db.exec(select(Approver).join(Approval).where(
                Approval.request_id == request.id, Approval.decision == "approve"))).all()
            try:
                people = {a.name: a for a in (approver, *approved)}
                known = await source.groups_of(db, list(people.values()))
            except GroupsUnavailable as refusal:
                await self.ctx.audit(db, "decision.refused", f"approver:{approver_name}",
                                     f"request:{ident}", reason=str(refusal), via=via,
                                     directory=source.where)
                await db.commit()
                raise
        return Prefetched(source, known)

    async def _decide(self, db: AsyncSession, request: AccessRequest, approver: Approver,
                      tech: Technician, device: Device, policies: list[Policy], approve: bool,
                      comment: str | None, via: str, groups: GroupSource) -> Decision:
        if request.state != RequestState.PENDING:
            raise Conflict(f"request {request.id} is {request.state}: there is nothing to decide")
        mine = await self_approval(db, tech, approver)
        if mine:
            raise SelfApproval(mine)
        refusal = await eligibility_refusal(db, tech, approver, policies, device, groups)
        if refusal:
            raise Refused(refusal)
        _, rules = applicable_rules(policies, tech, device)
        existing = (await db.exec(select(Approval).where(
            Approval.request_id == request.id, Approval.approver_id == approver.id))).first()
        if existing:
            raise Conflict(f"{approver.name} already decided on request {request.id}")
        now = self.ctx.now()
        assert request.id is not None and approver.id is not None
        assert tech.id is not None and device.id is not None
        db.add(Approval(request_id=request.id, approver_id=approver.id,
                        decision="approve" if approve else "deny", comment=comment, via=via,
                        created_at=now))
        actor, subject = f"approver:{approver.name}", f"request:{request.id}"
        if not approve:
            await self._transition(db, request, RequestEvent.DENY)
            await self.ctx.audit(db, "request.denied", actor, subject, comment=comment, via=via)
            return Decision(request, None, ())
        await self.ctx.audit(db, "request.approval", actor, subject, comment=comment, via=via)
        approved_by = await approving_groups(db, request.id, groups, rules)
        if not approvals_satisfied(rules, approved_by):
            return Decision(request, None, missing_approvals(rules, approved_by))
        try:
            check_device_grantable(device.state)
        except DomainError as exc:
            raise Refused(str(exc)) from None
        await self._transition(db, request, RequestEvent.APPROVE)
        start, end = window_for(now, request.requested_start,
                                timedelta(seconds=request.duration_s))
        grant = Grant(request_id=request.id, technician_id=tech.id, device_id=device.id,
                      protocols=request.protocols, start=start, end=end,
                      state=state_at(Window(start, end), now, revoked=False).value,
                      created_at=now)
        db.add(grant)
        await db.flush()
        await self.ctx.audit(db, "request.approved", actor, subject, grant=grant.id)
        await self.ctx.audit(db, "grant.created", actor, f"grant:{grant.id}",
                             technician=tech.name, device=device.name,
                             protocols=grant.protocols, start=start.isoformat(),
                             end=end.isoformat(), state=grant.state)
        return Decision(request, grant, ())

    async def _transition(self, db: AsyncSession, request: AccessRequest,
                          event: RequestEvent) -> None:
        try:
            state = next_request_state(RequestState(request.state), event)
        except DomainError as exc:
            raise Conflict(f"request {request.id}: {exc}") from None
        request.state = state.value
        request.decided_at = self.ctx.now()
        db.add(request)


async def eligibility_refusal(db: AsyncSession, tech: Technician, approver: Approver,
                              policies: list[Policy], device: Device,
                              source: GroupSource | None = None) -> str | None:
    """Why ``approver`` may not decide a request of ``tech`` on ``device`` (None: they may).
    The requester is recognised by name or by e-mail address; an approver outside every group
    the policy names may neither approve nor deny. Their groups come from ``source`` (the
    database's by default; see :mod:`broker.services.groups`), which raises GroupsUnavailable
    when it cannot tell."""
    if approver.disabled:
        return f"approver {approver.name} is disabled"
    mine = await self_approval(db, tech, approver)
    if mine:
        return mine
    _, rules = applicable_rules(policies, tech, device)
    needed_groups = {g for rule in rules.approvals for g in rule.groups}
    if not needed_groups:
        return None
    source = source or LocalGroups()
    groups = (await source.groups_of(db, [approver])).get(approver.name, frozenset())
    if not groups & needed_groups:
        where = "" if isinstance(source, LocalGroups) else f", according to {source.where}"
        return (f"approver {approver.name} is in none of the groups this request needs"
                f" ({', '.join(sorted(needed_groups))}){where}")
    return None


class SelfApproval(Refused):
    """The approver is the requesting technician (by name, mailbox or an explicit link)."""


async def same_person(db: AsyncSession, tech: Technician, approver: Approver) -> str | None:
    """How ``approver`` is known to be ``tech`` themself (None: two people). One person is
    recognised by the same name, by addresses that reach the same mailbox (case and ``+tag``
    ignored, see :mod:`broker.domain.identity`), or by a link an admin made
    (``broker approver link``)."""
    if tech.name.casefold() == approver.name.casefold():
        return f"approver {approver.name} is technician {tech.name}"
    if same_mailbox(tech.email, approver.email):
        return (f"approver {approver.name}'s e-mail address reaches the mailbox of technician"
                f" {tech.name}")
    if await db.get(SamePerson, (approver.id, tech.id)) is not None:
        return f"approver {approver.name} is linked to technician {tech.name} as one person"
    return None


async def self_approval(db: AsyncSession, tech: Technician, approver: Approver) -> str | None:
    """Why ``approver`` may not decide a request ``tech`` filed because they are one person."""
    try:
        check_decider(tech.name, approver.name)
    except DomainError as exc:
        return str(exc)
    same = await same_person(db, tech, approver)
    return f"{same}, who requested this access: nobody decides on their own request" \
        if same else None


async def expire_pending(ctx: Context) -> list[int]:
    """Expire pending requests whose approval deadline has passed."""
    now = ctx.now()
    async with ctx.store.session() as db:
        await lock_chain(db)  # every node and worker runs this: one at a time
        due = (await db.exec(select(AccessRequest).where(
            AccessRequest.state == RequestState.PENDING.value,
            AccessRequest.expires_at <= now))).all()
        for request in due:
            request.state, request.decided_at = RequestState.EXPIRED.value, now
            db.add(request)
            await ctx.audit(db, "request.expired", "broker", f"request:{request.id}")
    return [r.id for r in due if r.id is not None]


async def approving_groups(db: AsyncSession, request_id: int | None, source: GroupSource,
                           rules: Rules) -> dict[str, frozenset[str]]:
    """The groups, now, of each approver who approved the request so far (when ``rules``
    name no group, only the count matters: the directory is not asked)."""
    if not any(rule.groups for rule in rules.approvals):
        source = LocalGroups()
    approvers = (await db.exec(select(Approver).join(Approval).where(
        Approval.request_id == request_id, Approval.decision == "approve")
        .order_by(col(Approval.id)))).all()
    return await source.groups_of(db, list(approvers))



async def _view(db: AsyncSession, request: AccessRequest) -> RequestView:
    tech = await db.get(Technician, request.technician_id)
    device = await db.get(Device, request.device_id)
    assert tech is not None and device is not None
    approvals = (await db.exec(select(Approval, Approver).join(Approver)
                               .where(Approval.request_id == request.id)
                               .order_by(col(Approval.id)))).all()
    grant = (await db.exec(select(Grant).where(Grant.request_id == request.id))).first()
    return RequestView(request, tech, device, [tuple(a) for a in approvals], grant)  # type: ignore[misc]
