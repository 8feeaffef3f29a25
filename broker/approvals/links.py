"""Personal approval links: issuing them, spending them once, and what the page behind one
shows. Everything here reads or writes through the store; the pages live in broker/http."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.approvals.tokens import USED, ApprovalClaims, TokenRefused, mint
from broker.config import Config
from broker.credentials.keys import KeyPaths, load_secret_bytes
from broker.domain.durations import parse_duration
from broker.domain.policy import missing_approvals
from broker.domain.requests import RequestState
from broker.errors import Conflict, Refused
from broker.services.context import Context
from broker.services.groups import GroupsUnavailable, group_source
from broker.services.lookup import by_id, by_name, maybe_by_name
from broker.services.policies import applicable_rules
from broker.services.requests import approving_groups, eligibility_refusal
from broker.store.models import (
    AccessRequest,
    Approval,
    Approver,
    Device,
    DeviceCredential,
    Grant,
    Technician,
    UsedApprovalToken,
)


def web_secret(config: Config) -> bytes:
    return load_secret_bytes(KeyPaths.of(config).web_key, "the web secret key")


def link_ttl(config: Config) -> timedelta:
    return parse_duration(config.settings.approvals.link_ttl)


def link_url(config: Config, token: str) -> str:
    return f"{config.settings.broker.public_url}/approve/{token}"


@dataclass(frozen=True)
class IssuedLink:
    url: str
    claims: ApprovalClaims


def issue(ctx: Context, secret: bytes, request_id: int, approver: str) -> IssuedLink:
    """A fresh link (not yet audited: see :func:`record_issued`)."""
    token, claims = mint(secret, approver, request_id, ctx.now(), link_ttl(ctx.config))
    return IssuedLink(link_url(ctx.config, token), claims)


async def record_issued(ctx: Context, db: AsyncSession, link: IssuedLink, actor: str,
                        via: str) -> None:
    claims = link.claims
    await ctx.audit(db, "approval.link_issued", actor, f"request:{claims.request_id}",
                    approver=claims.approver, jti=claims.jti,
                    expires_at=claims.expires_at.isoformat(), via=via)


async def issue_link(ctx: Context, secret: bytes, request_id: int, approver_name: str,
                     actor: str, via: str = "cli") -> IssuedLink:
    """``broker request link``: a link for a pending request and an approver who may decide
    it (anything else is refused now rather than on the approver's phone)."""
    policies = ctx.policies()
    async with ctx.store.session() as db:
        request = await by_id(db, AccessRequest, request_id)
        approver = await by_name(db, Approver, approver_name)
        if effective_state(request, ctx.now()) != RequestState.PENDING:
            raise Conflict(f"request {request_id} is {effective_state(request, ctx.now())}:"
                           " there is nothing to decide")
        tech = await db.get(Technician, request.technician_id)
        device = await db.get(Device, request.device_id)
        assert tech is not None and device is not None
        refusal = await eligibility_refusal(db, tech, approver, policies, device,
                                            group_source(ctx))
        if refusal:
            raise Refused(refusal)
        link = issue(ctx, secret, request_id, approver.name)
        await record_issued(ctx, db, link, actor, via)
    return link


def effective_state(request: AccessRequest, now: datetime) -> str:
    """The request's state as of ``now``, without writing (a pending request past its deadline
    is expired even before the scheduler says so)."""
    if request.state == RequestState.PENDING and request.expires_at <= now:
        return RequestState.EXPIRED.value
    return request.state


# -- single use --------------------------------------------------------------------------------
def spender(ctx: Context, claims: ApprovalClaims) -> Callable[[AsyncSession], Awaitable[None]]:
    """Spends the token inside the decision's transaction (``Requests.decide(within=...)``):
    the decision and the spending commit together or not at all."""

    async def spend(db: AsyncSession) -> None:
        if await db.get(UsedApprovalToken, claims.jti) is not None:
            raise TokenRefused(USED)
        db.add(UsedApprovalToken(jti=claims.jti, request_id=claims.request_id,
                                 approver=claims.approver, used_at=ctx.now(),
                                 expires_at=claims.expires_at))
        await db.flush()

    return spend


async def is_spent(ctx: Context, jti: str) -> bool:
    async with ctx.store.session() as db:
        return await db.get(UsedApprovalToken, jti) is not None


async def purge_spent(ctx: Context) -> int:
    """Forget spent ids whose tokens have expired anyway (they are refused as expired)."""
    async with ctx.store.session() as db:
        result = await db.exec(delete(UsedApprovalToken).where(
            col(UsedApprovalToken.expires_at) <= ctx.now()))
        return int(result.rowcount or 0)


# -- what the page shows -----------------------------------------------------------------------
@dataclass(frozen=True)
class DecisionSoFar:
    approver: str
    decision: str
    comment: str | None
    at: datetime


@dataclass(frozen=True)
class ApprovalPage:
    request: AccessRequest
    state: str
    technician: Technician
    device: Device
    approver: Approver | None
    refusal: str | None  # why this approver may not decide (None: they may)
    decisions: list[DecisionSoFar]
    policy_needs: tuple[str, ...]
    still_needed: tuple[str, ...]
    host_key_fingerprint: str | None
    credential_owner: str | None
    grant: Grant | None

    @property
    def can_decide(self) -> bool:
        return self.refusal is None and self.state == RequestState.PENDING


async def load_page(ctx: Context, claims: ApprovalClaims) -> ApprovalPage:
    """Everything the approver needs to decide, read without changing anything."""
    policies = ctx.policies()
    now = ctx.now()
    async with ctx.store.session() as db:
        request = await by_id(db, AccessRequest, claims.request_id)
        tech = await db.get(Technician, request.technician_id)
        device = await db.get(Device, request.device_id)
        assert tech is not None and device is not None
        approver = await maybe_by_name(db, Approver, claims.approver)
        rows = (await db.exec(select(Approval, Approver).join(Approver)
                              .where(Approval.request_id == request.id)
                              .order_by(col(Approval.id)))).all()
        decisions = [DecisionSoFar(a.name, x.decision, x.comment, x.created_at)
                     for x, a in rows]
        credential = (await db.exec(select(DeviceCredential).where(
            DeviceCredential.device_id == device.id, DeviceCredential.current))).first()
        grant = (await db.exec(select(Grant).where(Grant.request_id == request.id))).first()
        source = group_source(ctx)
        _, rules = applicable_rules(policies, tech, device)
        groups: dict[str, frozenset[str]] | None = None
        try:
            groups = await approving_groups(db, request.id, source, rules)
            if approver is None:
                refusal: str | None = f"there is no approver named {claims.approver!r} any more"
            else:
                refusal = await eligibility_refusal(db, tech, approver, policies, device, source)
        except GroupsUnavailable as exc:
            refusal = str(exc)
    state = effective_state(request, now)
    needs = tuple(rule.describe() for rule in rules.approvals)
    if state != RequestState.PENDING:
        still_needed: tuple[str, ...] = ()
    else:
        still_needed = missing_approvals(rules, groups) if groups is not None else needs
    return ApprovalPage(
        request=request, state=state, technician=tech, device=device, approver=approver,
        refusal=refusal, decisions=decisions,
        policy_needs=needs, still_needed=still_needed,
        host_key_fingerprint=fingerprint(device.host_key),
        credential_owner=credential.owner if credential else None, grant=grant)


def fingerprint(host_key: str | None) -> str | None:
    """``SHA256:...`` of a pinned OpenSSH host key line (or the line itself if unreadable)."""
    if not host_key:
        return None
    import asyncssh  # here: only an approval page that shows a pinned key needs it

    try:
        return str(asyncssh.import_public_key(host_key).get_fingerprint("sha256"))
    except (asyncssh.KeyImportError, ValueError, TypeError):
        return host_key[:100]
