"""Objects as the dictionaries ``--json`` and the API print (and the CLI's human views read)."""

from __future__ import annotations

from typing import Any

from broker.services.directory import TechnicianView
from broker.services.grants import GrantRow
from broker.services.requests import RequestView
from broker.store.models import Approver, Device


def technician(view: TechnicianView) -> dict[str, Any]:
    t = view.technician
    return {"id": t.id, "name": t.name, "vendor": t.vendor, "email": t.email,
            "disabled": t.disabled, "state": view.state, "totp": t.totp_secret is not None,
            "created_at": t.created_at, "expires_at": t.expires_at,
            "last_login_at": t.last_login_at,
            "keys": [{"fingerprint": k.fingerprint, "comment": k.comment} for k in view.keys]}


def approver(row: Approver, groups: list[str],
             same_person_as: list[str] | None = None) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "email": row.email, "groups": groups,
            "same_person_as": same_person_as or [], "disabled": row.disabled,
            "created_at": row.created_at}


def device(row: Device) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "host": row.host, "port": row.port,
            "login_user": row.login_user, "web_url": row.web_url, "model": row.model,
            "firmware": row.firmware, "department": row.department, "purpose": row.purpose,
            "tags": row.tags, "state": row.state, "rotate": row.rotate,
            "host_key_pinned": row.host_key is not None, "created_at": row.created_at,
            "rotate_method": row.rotate_method, "rotation_due_at": row.rotation_due_at,
            "rotation_attempts": row.rotation_attempts, "rotated_at": row.rotated_at,
            "probe": row.probe, "firmware_observed": row.firmware_observed,
            "firmware_observed_at": row.firmware_observed_at,
            "firmware_observed_session": row.firmware_observed_session,
            "firmware_drift": row.firmware_observed is not None}


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
            "revoked_at": g.revoked_at, "revoke_reason": g.revoke_reason,
            "breakglass_reason": g.breakglass_reason, "breakglass_by": g.breakglass_by,
            "reviewed_by": g.reviewed_by, "review_comment": g.review_comment,
            "review": _review_state(g.breakglass, g.reviewed_at)}


def _review_state(breakglass: bool, reviewed_at: object) -> str | None:
    """``open`` or ``done`` for a break-glass grant's review; None for approved grants."""
    if not breakglass:
        return None
    return "open" if reviewed_at is None else "done"


def breakglass_mark(d: dict[str, Any]) -> str:
    """The ``grant list`` column: approved, or a loud break-glass mark with its review."""
    if d["review"] is None:
        return "approved"
    return "BREAK-GLASS, REVIEW OPEN" if d["review"] == "open" else "break-glass, reviewed"


def breakglass_fields(d: dict[str, Any]) -> list[tuple[str, Any]]:
    """``grant show`` lines for a break-glass grant: why, by whom, and its review."""
    if d["review"] is None:
        return []
    review = ("OPEN: awaiting an approver (broker grant review"
              f" {d['id']} --as APPROVER --comment TEXT)" if d["review"] == "open" else
              f"done by {d['reviewed_by']} at {d['reviewed_at']:%Y-%m-%d %H:%M:%SZ}:"
              f" {d['review_comment']}")
    return [("reason", d["breakglass_reason"]), ("opened by", d["breakglass_by"]),
            ("review", review)]
