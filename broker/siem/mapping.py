"""Audit rows to SIEM events: OCSF 1.1 JSON (the default) or CEF. Pure: no I/O.

Every event carries the audit chain's ``seq``, ``hash`` and ``prev_hash`` (OCSF:
``metadata.sequence``, ``metadata.uid`` = hash, and ``unmapped.audit``; CEF: ``externalId``,
``cs1``, ``cs2``), and the row's own fields exactly as they were hashed, so a receiver can
recompute ``hash = sha256(prev_hash + "\\n" + canonical)`` (see
:func:`broker.audit.chain.canonical`) and check that seqs run without gaps and each
``prev_hash`` is the previous message's ``hash``.

The OCSF class of each event kind (the exact kind; any other ``*refused`` kind is a failed
API Activity; anything else a Base Event)::

    kind                                     class (uid)                 activity       status
    login.succeeded, staff.login_succeeded   Authentication (3002)       Logon (1)      Success
    web.signin, web.device_login             Authentication (3002)       Logon (1)      Success
    login.failed/.totp_failed/.throttled,    Authentication (3002)       Logon (1)      Failure
      staff.login_failed, web.signin_refused, web.device_login_failed
    staff.logout                             Authentication (3002)       Logoff (2)     Success
    technician./staff./approver.added        Account Change (3001)       Create (1)
    technician./staff.disabled               Account Change (3001)       Disable (5)
    technician./staff.totp_enrolled          Account Change (3001)       MFA Enable (10)
    api_token.created / .revoked             Account Change (3001)       Create / Delete
    device.rotated / .rotation_failed        Account Change (3001)       Password Change (3)
    device.secrets_deleted                   Account Change (3001)       Delete (6)
    grant.created/.activated/.breakglass,    User Access Management      Assign Privileges (1)
      certificate.issued                       (3005)
    grant.expired / .revoked                 User Access Management      Revoke Privileges (2)
    grant.reviewed / .ending_soon            User Access Management      Other (99)
    session.started, web.session_started     SSH Activity (4007) /       Open (1)
                                               Network Activity (4001)
    session.ended/.interrupted,              SSH Activity (4007) /       Close (2)
      web.session_ended                        Network Activity (4001)
    session.refused, channel.refused         SSH Activity (4007)         Refuse (5)     Failure
    forward.failed                           SSH Activity (4007)         Fail (4)       Failure
    session.kill_requested                   SSH Activity (4007)         Other (99)
    request.created                          API Activity (6003)         Create (1)
    request.approved/denied/cancelled/       API Activity (6003)         Update (3)
      expired/approval, api.decision
    *.refused, policy.denied,                API Activity (6003)         Other (99)     Failure
      web.request_refused
    approval.link_issued, web.signin_link    API Activity (6003)         Create (1)
    device.added/.host_key_pinned/           API Activity (6003)         Create / Update
      .web_configured, vault.key_rotated
    recording.viewed / .exported,            API Activity (6003)         Read (2)
      session.watched
    recording.hold / .pruned                 API Activity (6003)         Update / Delete
    anything else (notification.failed,      Base Event (0)              Other (99)
      refusal.suppressed, new kinds)

Categories: 3002/3001/3005 are Identity & Access Management (3), 4001/4007 Network Activity
(4), 6003 Application Activity (6), Base Event Uncategorized (0).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

OCSF_VERSION = "1.1.0"
PRODUCT = {"name": "Vendor Access Broker", "vendor_name": "Vendor Access Broker"}
SUCCESS, FAILURE = 1, 2
# OCSF severity_id to syslog severity (RFC 5424): Informational -> info (6), Low -> notice
# (5), Medium -> warning (4), High -> error (3), Critical -> critical (2), Fatal -> alert (1)
SYSLOG_SEVERITY = {0: 6, 1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 1, 99: 5}


class AuditRow(Protocol):
    """What the mapping reads of :class:`broker.store.models.AuditEvent`."""

    seq: int
    ts: datetime
    kind: str
    actor: str
    subject: str | None
    data: str
    prev_hash: str
    hash: str


@dataclass(frozen=True)
class OcsfClass:
    uid: int
    name: str
    category_uid: int
    category_name: str
    activities: dict[int, str]


IAM, NETWORK, APPLICATION = (3, "Identity & Access Management"), (4, "Network Activity"), (
    6, "Application Activity")
BASE = OcsfClass(0, "Base Event", 0, "Uncategorized", {0: "Unknown", 99: "Other"})
AUTHENTICATION = OcsfClass(3002, "Authentication", *IAM,
                           {1: "Logon", 2: "Logoff", 99: "Other"})
ACCOUNT_CHANGE = OcsfClass(3001, "Account Change", *IAM,
                           {1: "Create", 2: "Enable", 3: "Password Change", 5: "Disable",
                            6: "Delete",
                            10: "MFA Factor Enable", 99: "Other"})
USER_ACCESS = OcsfClass(3005, "User Access Management", *IAM,
                        {1: "Assign Privileges", 2: "Revoke Privileges", 99: "Other"})
NETWORK_ACTIVITY = OcsfClass(4001, "Network Activity", *NETWORK,
                             {1: "Open", 2: "Close", 5: "Refuse", 99: "Other"})
SSH_ACTIVITY = OcsfClass(4007, "SSH Activity", *NETWORK,
                         {1: "Open", 2: "Close", 4: "Fail", 5: "Refuse", 99: "Other"})
API_ACTIVITY = OcsfClass(6003, "API Activity", *APPLICATION,
                         {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"})


@dataclass(frozen=True)
class Mapping:
    cls: OcsfClass
    activity_id: int
    status_id: int = SUCCESS
    severity_id: int = 1  # Informational


def _m(cls: OcsfClass, activity: int, failed: bool = False, severity: int | None = None
       ) -> Mapping:
    return Mapping(cls, activity, FAILURE if failed else SUCCESS,
                   severity if severity is not None else (2 if failed else 1))


# Exact kinds first; then "prefix." entries; anything else is a Base Event.
KINDS: dict[str, Mapping] = {
    "login.succeeded": _m(AUTHENTICATION, 1),
    "login.failed": _m(AUTHENTICATION, 1, failed=True),
    "login.totp_failed": _m(AUTHENTICATION, 1, failed=True),
    "login.throttled": _m(AUTHENTICATION, 1, failed=True, severity=3),
    "staff.login_succeeded": _m(AUTHENTICATION, 1),
    "staff.login_failed": _m(AUTHENTICATION, 1, failed=True),
    "staff.logout": _m(AUTHENTICATION, 2),
    "web.signin": _m(AUTHENTICATION, 1),
    "web.signin_refused": _m(AUTHENTICATION, 1, failed=True),
    "web.device_login": _m(AUTHENTICATION, 1),
    "web.device_login_failed": _m(AUTHENTICATION, 1, failed=True),
    "technician.added": _m(ACCOUNT_CHANGE, 1),
    "staff.added": _m(ACCOUNT_CHANGE, 1),
    "approver.added": _m(ACCOUNT_CHANGE, 1),
    "technician.disabled": _m(ACCOUNT_CHANGE, 5),
    "technician.expired": _m(ACCOUNT_CHANGE, 5),
    "technician.inactive_disabled": _m(ACCOUNT_CHANGE, 5),
    "technician.enabled": _m(ACCOUNT_CHANGE, 2),
    "vendor.added": _m(ACCOUNT_CHANGE, 1),
    "vendor.disabled": _m(ACCOUNT_CHANGE, 5),
    "vendor.contract_ended": _m(ACCOUNT_CHANGE, 5),
    "vendor.contract_ending": _m(ACCOUNT_CHANGE, 99),  # a warning ahead of the end
    "vendor.enabled": _m(ACCOUNT_CHANGE, 2),
    "staff.disabled": _m(ACCOUNT_CHANGE, 5),
    "technician.totp_enrolled": _m(ACCOUNT_CHANGE, 10),
    # vendor self-service (issue 20)
    "vendor.invited": _m(ACCOUNT_CHANGE, 99),
    "invitation.used": _m(ACCOUNT_CHANGE, 99),
    "invitation.refused": _m(AUTHENTICATION, 1, failed=True),
    "technician.pending": _m(ACCOUNT_CHANGE, 1),
    "technician.approved": _m(ACCOUNT_CHANGE, 2),
    "technician.rejected": _m(ACCOUNT_CHANGE, 99),
    "technician.totp_confirmed": _m(ACCOUNT_CHANGE, 10),
    "vendor.login": _m(AUTHENTICATION, 1),
    "vendor.logout": _m(AUTHENTICATION, 2),
    "vendor.login_refused": _m(AUTHENTICATION, 1, failed=True),
    "vendor.refused": _m(AUTHENTICATION, 1, failed=True),
    "vendor.contact_refused": _m(ACCOUNT_CHANGE, 99, failed=True, severity=3),
    "staff.totp_enrolled": _m(ACCOUNT_CHANGE, 10),
    "api_token.created": _m(ACCOUNT_CHANGE, 1),
    "api_token.revoked": _m(ACCOUNT_CHANGE, 6),
    "device.rotated": _m(ACCOUNT_CHANGE, 3),
    "device.rotation_failed": _m(ACCOUNT_CHANGE, 3, failed=True, severity=3),
    "device.secrets_deleted": _m(ACCOUNT_CHANGE, 6),
    "grant.created": _m(USER_ACCESS, 1),
    "grant.activated": _m(USER_ACCESS, 1),
    "grant.breakglass": _m(USER_ACCESS, 1, severity=4),  # High: access without approval
    "certificate.issued": _m(USER_ACCESS, 1),
    "grant.expired": _m(USER_ACCESS, 2),
    "grant.revoked": _m(USER_ACCESS, 2),
    "grant.reviewed": _m(USER_ACCESS, 99),
    "grant.ending_soon": _m(USER_ACCESS, 99),
    "session.started": _m(SSH_ACTIVITY, 1),
    "session.ended": _m(SSH_ACTIVITY, 2),
    "session.interrupted": _m(SSH_ACTIVITY, 2),
    "session.refused": _m(SSH_ACTIVITY, 5, failed=True),
    "channel.refused": _m(SSH_ACTIVITY, 5, failed=True),
    "forward.failed": _m(SSH_ACTIVITY, 4, failed=True),
    "session.kill_requested": _m(SSH_ACTIVITY, 99),
    "web.session_started": _m(NETWORK_ACTIVITY, 1),
    "web.session_ended": _m(NETWORK_ACTIVITY, 2),
    "request.created": _m(API_ACTIVITY, 1),
    "request.approved": _m(API_ACTIVITY, 3),
    "request.denied": _m(API_ACTIVITY, 3),
    "request.cancelled": _m(API_ACTIVITY, 3),
    "request.expired": _m(API_ACTIVITY, 3),
    "request.approval": _m(API_ACTIVITY, 3),
    "api.decision": _m(API_ACTIVITY, 3),
    "policy.denied": _m(API_ACTIVITY, 99, failed=True),
    "web.request_refused": _m(API_ACTIVITY, 99, failed=True),
    "approval.link_issued": _m(API_ACTIVITY, 1),
    "web.signin_link": _m(API_ACTIVITY, 1),
    "device.added": _m(API_ACTIVITY, 1),
    "device.host_key_pinned": _m(API_ACTIVITY, 3),
    "device.web_configured": _m(API_ACTIVITY, 3),
    "vault.key_rotated": _m(API_ACTIVITY, 3),
    "recording.viewed": _m(API_ACTIVITY, 2),
    "recording.exported": _m(API_ACTIVITY, 2),
    "session.watched": _m(API_ACTIVITY, 2),
    "recording.hold": _m(API_ACTIVITY, 3),
    "recording.pruned": _m(API_ACTIVITY, 4),
}
FALLBACK = Mapping(BASE, 99)
REFUSED = _m(API_ACTIVITY, 99, failed=True)  # any other "*.refused" kind


def mapping_for(kind: str) -> Mapping:
    found = KINDS.get(kind)
    if found is not None:
        return found
    if kind.endswith("_refused") or kind.endswith(".refused"):
        return REFUSED
    return FALLBACK


def audit_fields(row: AuditRow) -> dict[str, Any]:
    """The row as it was hashed (``ts`` in the chain's own ISO form), plus its links."""
    return {"seq": row.seq, "ts": row.ts.isoformat(), "kind": row.kind, "actor": row.actor,
            "subject": row.subject, "data": json.loads(row.data), "prev_hash": row.prev_hash,
            "hash": row.hash}


def to_ocsf(row: AuditRow, product_version: str = "") -> dict[str, Any]:
    """One OCSF event for one audit row."""
    found = mapping_for(row.kind)
    cls = found.cls
    event: dict[str, Any] = {
        "category_uid": cls.category_uid, "category_name": cls.category_name,
        "class_uid": cls.uid, "class_name": cls.name,
        "activity_id": found.activity_id,
        "activity_name": cls.activities.get(found.activity_id, "Other"),
        "type_uid": cls.uid * 100 + found.activity_id,
        "severity_id": found.severity_id,
        "status_id": found.status_id, "status": "Success" if found.status_id == SUCCESS
        else "Failure",
        "time": int(row.ts.timestamp() * 1000),
        "message": f"{row.kind} {row.subject}" if row.subject else row.kind,
        "actor": {"user": {"name": row.actor}},
        "metadata": {
            "version": OCSF_VERSION,
            "product": {**PRODUCT, **({"version": product_version} if product_version else {})},
            "log_name": "audit", "event_code": row.kind,
            "sequence": row.seq, "uid": row.hash,
        },
        "unmapped": {"audit": audit_fields(row)},
    }
    if cls.uid == AUTHENTICATION.uid and row.subject:
        event["user"] = {"name": row.subject}
    return event


def ocsf_json(row: AuditRow, product_version: str = "") -> str:
    return json.dumps(to_ocsf(row, product_version), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


# -- CEF (ArcSight Common Event Format, revision 25) --------------------------------------------
CEF_SEVERITY = {0: 0, 1: 1, 2: 3, 3: 5, 4: 8, 5: 10, 6: 10, 99: 3}


def _cef_header(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _cef_value(value: str) -> str:
    return (value.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r")
            .replace("\n", "\\n"))


def to_cef(row: AuditRow, product_version: str = "") -> str:
    """One CEF line. The chain's links are ``externalId`` (seq), ``cs1`` (hash) and ``cs2``
    (prev_hash); the event's data is ``cs3`` (canonical JSON)."""
    found = mapping_for(row.kind)
    header = ["CEF:0", "Vendor Access Broker", "Vendor Access Broker", product_version or "0",
              row.kind, row.kind, str(CEF_SEVERITY.get(found.severity_id, 3))]
    extension = {
        "rt": str(int(row.ts.timestamp() * 1000)), "externalId": str(row.seq),
        "suser": row.actor, "duser": row.subject or "", "act": row.kind,
        "outcome": "success" if found.status_id == SUCCESS else "failure",
        "cat": found.cls.name,
        "cs1Label": "auditHash", "cs1": row.hash,
        "cs2Label": "auditPrevHash", "cs2": row.prev_hash,
        "cs3Label": "auditData", "cs3": row.data,
        "cs4Label": "auditTime", "cs4": row.ts.isoformat(),
    }
    return "|".join(_cef_header(part) if i else part for i, part in enumerate(header)) + "|" + \
        " ".join(f"{key}={_cef_value(value)}" for key, value in extension.items() if value)
