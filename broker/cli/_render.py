"""Objects as the dictionaries ``--json`` prints (and the human views read from)."""

from __future__ import annotations

from typing import Any

from broker.services.directory import TechnicianView
from broker.services.grants import GrantRow
from broker.services.requests import RequestView
from broker.store.models import Approver, Device


def technician(view: TechnicianView) -> dict[str, Any]:
    t = view.technician
    return {"id": t.id, "name": t.name, "vendor": t.vendor, "email": t.email,
            "disabled": t.disabled, "totp": t.totp_secret is not None,
            "created_at": t.created_at,
            "keys": [{"fingerprint": k.fingerprint, "comment": k.comment} for k in view.keys]}


def approver(row: Approver, groups: list[str]) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "email": row.email, "groups": groups,
            "disabled": row.disabled, "created_at": row.created_at}


def device(row: Device) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "host": row.host, "port": row.port,
            "login_user": row.login_user, "web_url": row.web_url, "model": row.model,
            "firmware": row.firmware, "department": row.department, "purpose": row.purpose,
            "tags": row.tags, "state": row.state, "rotate": row.rotate,
            "host_key_pinned": row.host_key is not None, "created_at": row.created_at}


def request(view: RequestView) -> dict[str, Any]:
    r = view.request
    return {"id": r.id, "state": r.state, "technician": view.technician.name,
            "vendor": view.technician.vendor, "device": view.device.name, "reason": r.reason,
            "duration_s": r.duration_s, "requested_start": r.requested_start,
            "protocols": r.protocols, "policy": r.policy, "created_at": r.created_at,
            "expires_at": r.expires_at, "decided_at": r.decided_at,
            "decisions": [{"approver": a.name, "decision": d.decision, "comment": d.comment,
                           "via": d.via, "at": d.created_at} for d, a in view.approvals],
            "grant": view.grant.id if view.grant else None}


def grant(row: GrantRow) -> dict[str, Any]:
    g = row.grant
    return {"id": g.id, "state": g.state, "technician": row.technician.name,
            "vendor": row.technician.vendor, "device": row.device.name,
            "protocols": g.protocols, "start": g.start, "end": g.end, "request": g.request_id,
            "breakglass": g.breakglass, "reviewed_at": g.reviewed_at,
            "revoked_at": g.revoked_at, "revoke_reason": g.revoke_reason}
