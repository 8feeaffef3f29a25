"""Requests, decisions and grants over the API: thin calls into the request and grant services."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from broker.errors import NotFound, Refused
from broker.http.api.framework import Call, page
from broker.http.api.schemas import (
    DecisionIn,
    DecisionOut,
    GrantList,
    GrantQuery,
    IdPath,
    RequestCreate,
    RequestList,
    RequestQuery,
    RevokeIn,
)
from broker.http.errors import BadInput
from broker.services import render
from broker.services.context import Transaction
from broker.services.directory import Directory
from broker.services.grants import Grants
from broker.services.requests import Requests


async def list_requests(call: Call[Any, RequestQuery, Any]) -> RequestList:
    q = call.query
    views = await Requests(call.ctx, call.caller.actor).find(q.state.value if q.state else None)
    rows = [render.request(v) for v in views if q.after is None or (v.request.id or 0) > q.after]
    items, cursor = page(rows, q.limit, lambda d: d["id"])
    return RequestList.model_validate({"items": items, "next": cursor})


async def show_request(call: Call[IdPath, Any, Any]) -> dict[str, Any]:
    return render.request(await Requests(call.ctx, call.caller.actor).show(call.path.id))


async def create_request(call: Call[Any, Any, RequestCreate]) -> dict[str, Any]:
    body = call.body
    assert body is not None
    directory = Directory(call.ctx, call.caller.actor)
    for field, lookup in (("technician", directory.technician), ("device", directory.device)):
        try:
            await lookup(getattr(body, field))
        except NotFound as exc:
            raise BadInput(field, f"{field}: {exc}", status=422) from None
    requests = Requests(call.ctx, call.caller.actor)
    created = await requests.create(
        body.technician, body.device, timedelta(seconds=body.duration_s), body.reason,
        body.start, frozenset(body.protocols) if body.protocols is not None else None)
    return render.request(await requests.show(created.id or 0))


async def _decide(call: Call[IdPath, Any, DecisionIn], approve: bool) -> DecisionOut:
    approver = call.caller.approver
    if approver is None:
        raise Refused(f"token {call.caller.name!r} is not bound to an approver: only approver "
                      "tokens decide")
    comment = call.body.comment if call.body is not None else None

    async def token_used(db: Transaction) -> None:
        # Which token decided, in the decision's own transaction (the service's events name
        # the approver the token is bound to, with via=api).
        await call.ctx.audit(db, "api.decision", call.caller.actor, f"request:{call.path.id}",
                             approver=approver, decision="approve" if approve else "deny")

    result = await Requests(call.ctx, call.caller.actor).decide(
        call.path.id, approver, approve, comment, via="api", within=token_used)
    return DecisionOut(request=call.path.id, state=result.request.state,
                       grant=result.grant.id if result.grant else None,
                       still_needed=list(result.still_needed))


async def approve_request(call: Call[IdPath, Any, DecisionIn]) -> DecisionOut:
    return await _decide(call, approve=True)


async def deny_request(call: Call[IdPath, Any, DecisionIn]) -> DecisionOut:
    return await _decide(call, approve=False)


async def cancel_request(call: Call[IdPath, Any, Any]) -> dict[str, Any]:
    requests = Requests(call.ctx, call.caller.actor)
    await requests.cancel(call.path.id)
    return render.request(await requests.show(call.path.id))


async def list_grants(call: Call[Any, GrantQuery, Any]) -> GrantList:
    q = call.query
    rows = [render.grant(r) for r in await Grants(call.ctx, call.caller.actor).find(
        q.active, q.unreviewed) if q.after is None or (r.grant.id or 0) > q.after]
    items, cursor = page(rows, q.limit, lambda d: d["id"])
    return GrantList.model_validate({"items": items, "next": cursor})


async def show_grant(call: Call[IdPath, Any, Any]) -> dict[str, Any]:
    return render.grant(await Grants(call.ctx, call.caller.actor).show(call.path.id))


async def revoke_grant(call: Call[IdPath, Any, RevokeIn]) -> dict[str, Any]:
    grants = Grants(call.ctx, call.caller.actor)
    reason = call.body.reason if call.body is not None else None
    await grants.revoke(call.path.id, reason or f"revoked through the API by {call.caller.name}")
    return render.grant(await grants.show(call.path.id))
