"""Break-glass: an immediate grant with no approval, loudly marked and reviewed afterwards.

A break-glass grant starts now and lasts at most what the applicable policy's
``breakglass_max`` allows (the built-in default policy: 1h; a policy file without the field
forbids break-glass). Vendor and device matching, the device's state, the technician's state,
protocols and TOTP apply as for any grant; approvals and access hours do not (an emergency
does not wait for office hours). Each one opens a review item that stays open until a
registered, enabled approver records a review with a comment.

Entry points for the CLI and the web UI (each raises ``broker.errors`` types with one-line
messages, and audits refusals as well as successes):

* :func:`open_breakglass` -> the new :class:`Grant` (audit ``grant.breakglass``)
* :func:`review` -> the reviewed :class:`Grant` (audit ``grant.reviewed``)
* :func:`unreviewed` -> break-glass grants still awaiting review, oldest first
"""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.domain.durations import format_duration
from broker.domain.grants import GrantState
from broker.domain.policy import Policy
from broker.domain.text import BREAKGLASS_REASON, REVIEW_COMMENT, visible
from broker.errors import BrokerError, Conflict, Refused, StoreError, UsageError
from broker.services.context import Context
from broker.services.grants import GrantRow, Grants
from broker.services.lookup import by_id, by_name
from broker.services.policies import decide
from broker.services.requests import same_person
from broker.services.text import free_text
from broker.store.models import Approver, Device, Grant, Technician

MIN_REASON_WORDS = 3
MAX_TEXT = 2000
BANNER = ("BREAK-GLASS ACCESS: no approval was given for this session;"
          " it is recorded and will be reviewed by the hospital's approvers.")


def check_reason(reason: str) -> str:
    """The reason, stripped; UsageError unless it is a few words that say what is wrong."""
    text = " ".join(reason.split())
    if len(text.split()) < MIN_REASON_WORDS:
        raise UsageError(f"--reason must say in at least {MIN_REASON_WORDS} words why"
                         f" break-glass access is needed, got {reason.strip()!r}")
    if len(text) > MAX_TEXT:
        raise UsageError(f"--reason is longer than {MAX_TEXT} characters")
    return text


async def open_breakglass(ctx: Context, tech: str, device: str, duration: timedelta,
                          reason: str, actor: str) -> Grant:
    """Open an active break-glass grant for ``tech`` on ``device`` from now for ``duration``.

    ``actor`` names who opened it (``cli:USER``, ``staff:NAME``...). Raises UsageError (bad
    reason or duration), NotFound (unknown technician or device), Refused (disabled
    technician, device not active, no policy, break-glass forbidden, over the policy's cap),
    ConfigError (broken policy files: fail closed). Every refusal is audited as
    ``breakglass.refused``.
    """
    subject = f"{tech}+{device}"[:200]
    try:
        text = check_reason(await free_text(ctx, actor, subject, BREAKGLASS_REASON, reason))
        if duration <= timedelta(0):
            raise UsageError("--for must be longer than zero")
        policies = ctx.policies()
        async with ctx.store.session() as db:
            return await _open(ctx, db, tech, device, duration, text, actor, policies)
    except BrokerError as refusal:
        if isinstance(refusal, StoreError):
            raise  # the audit log is in that store: nothing can be recorded
        async with ctx.store.session() as db:
            await ctx.audit(db, "breakglass.refused", actor, subject, technician=tech,
                            device=device, duration_s=int(duration.total_seconds()),
                            reason=visible(reason[:MAX_TEXT]), refusal=str(refusal))
        raise


async def _open(ctx: Context, db: AsyncSession, tech_name: str, device_name: str,
                duration: timedelta, reason: str, actor: str, policies: list[Policy]) -> Grant:
    tech = await by_name(db, Technician, tech_name)
    device = await by_name(db, Device, device_name)
    if tech.disabled:
        raise Refused(f"technician {tech.name} is disabled: no break-glass access")
    if device.state != "active":
        state = "in maintenance" if device.state == "maintenance" else device.state
        raise Refused(f"device {device.name} is {state}: no break-glass access")
    decision = decide(policies, tech, device)
    policy = decision.policy
    if not decision.allowed or policy is None:
        raise Refused(f"no policy lets {tech.name} ({tech.vendor}) reach {device.name}: "
                      + (decision.reasons[-1] if decision.reasons else "refused"))
    cap = policy.rules.breakglass_max
    if cap is None:
        raise Refused(f"{_named(policy)} does not allow break-glass access to {device.name}"
                      " (it has no breakglass_max)")
    if duration > cap:
        raise Refused(f"{_named(policy)} limits break-glass to"
                      f" {format_duration(cap)}; --for {format_duration(duration)} is longer")
    assert tech.id is not None and device.id is not None
    now = ctx.now()
    grant = Grant(technician_id=tech.id, device_id=device.id,
                  protocols=sorted(p.value for p in policy.rules.protocols), start=now,
                  end=now + duration, state=GrantState.ACTIVE.value, breakglass=True,
                  breakglass_reason=reason,
                  breakglass_by=actor[:200], created_at=now)
    db.add(grant)
    await db.flush()
    approvers = (await db.exec(select(Approver.name).where(col(Approver.disabled).is_(False))
                               .order_by(col(Approver.name)))).all()
    await ctx.audit(
        db, "grant.breakglass", actor, f"grant:{grant.id}", grant=grant.id,
        technician=tech.name, vendor=tech.vendor, technician_email=tech.email,
        device=device.name, device_model=device.model, department=device.department,
        purpose=device.purpose, reason=reason, opened_by=actor, protocols=grant.protocols,
        start=now.isoformat(), end=grant.end.isoformat(), duration=format_duration(duration),
        policy=policy.name, approvers=list(approvers), state="active",
        review=f"broker grant review {grant.id} --as APPROVER --comment TEXT")
    return grant


def _named(policy: Policy) -> str:
    where = policy.location
    return f"policy {policy.name} " + (where if where.startswith("(") else f"({where})")


async def review(ctx: Context, grant_id: int, approver_name: str, comment: str) -> Grant:
    """Close the review of break-glass grant ``grant_id`` as approver ``approver_name``.

    Raises UsageError (empty or too long comment), NotFound (no such grant or approver),
    Refused (approver disabled, or the technician themself), Conflict (not a break-glass
    grant, or already reviewed). Refusals are audited as ``breakglass.review_refused``.
    """
    actor = f"approver:{approver_name}"[:200]
    try:
        text = comment.strip()
        if not text:
            raise UsageError("--comment must say what the review found")
        text = await free_text(ctx, actor, f"grant:{grant_id}", REVIEW_COMMENT, comment)
        async with ctx.store.session() as db:
            return await _review(ctx, db, grant_id, approver_name, text, actor)
    except BrokerError as refusal:
        if isinstance(refusal, StoreError):
            raise
        async with ctx.store.session() as db:
            await ctx.audit(db, "breakglass.review_refused", actor, f"grant:{grant_id}",
                            approver=approver_name, refusal=str(refusal))
        raise


async def _review(ctx: Context, db: AsyncSession, grant_id: int, approver_name: str,
                  comment: str, actor: str) -> Grant:
    grant = await by_id(db, Grant, grant_id)
    approver = await by_name(db, Approver, approver_name)
    if approver.disabled:
        raise Refused(f"approver {approver.name} is disabled and cannot review")
    if not grant.breakglass:
        raise Conflict(f"grant {grant_id} is not a break-glass grant (it was approved through"
                       f" request {grant.request_id}): there is nothing to review")
    if grant.reviewed_at is not None:
        raise Conflict(f"grant {grant_id} was already reviewed by {grant.reviewed_by} at"
                       f" {grant.reviewed_at:%Y-%m-%d %H:%M:%SZ}")
    tech = await db.get(Technician, grant.technician_id)
    device = await db.get(Device, grant.device_id)
    assert tech is not None and device is not None
    if tech.name.casefold() == approver.name.casefold():
        raise Refused(f"{approver.name} is the technician of grant {grant_id} and cannot"
                      " review it")
    same = await same_person(db, tech, approver)
    if same:
        raise Refused(f"{same}: nobody reviews their own break-glass grant ({grant_id})")
    grant.reviewed_at, grant.reviewed_by, grant.review_comment = ctx.now(), approver.name, comment
    db.add(grant)
    await ctx.audit(db, "grant.reviewed", actor, f"grant:{grant.id}", grant=grant.id,
                    technician=tech.name, device=device.name, reviewer=approver.name,
                    comment=comment, opened_by=grant.breakglass_by)
    return grant


async def unreviewed(ctx: Context) -> list[GrantRow]:
    """Break-glass grants whose review is still open, oldest first."""
    return await Grants(ctx, "broker").find(unreviewed=True)
