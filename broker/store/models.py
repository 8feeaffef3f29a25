"""The broker's tables. Schema changes go through Alembic (``broker/store/migrations``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from broker.store.types import UTCDateTime


def _utc(**kwargs: object) -> object:
    return Field(sa_type=UTCDateTime, **kwargs)  # type: ignore[call-overload]


class Vendor(SQLModel, table=True):
    """A technicians' employer: its mail domains, contract end and on/off switch."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=200)
    domains: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    contact: str | None = Field(default=None, max_length=320)
    contract_end: datetime | None = _utc(default=None)  # type: ignore[assignment]
    contract_end_noted: bool = False  # vendor.contract_ended audited for this contract_end
    disabled: bool = False
    created_at: datetime = _utc()  # type: ignore[assignment]


class Technician(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=63)
    vendor: str = Field(max_length=200)  # the vendor's name (kept in step with vendor_id)
    vendor_id: int | None = Field(default=None, foreign_key="vendor.id", index=True)
    expires_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    last_login_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    enabled_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    email: str | None = Field(default=None, max_length=320)
    disabled: bool = False
    totp_secret: bytes | None = Field(default=None, sa_type=LargeBinary)  # vault-encrypted
    totp_last_step: int | None = None  # newest TOTP time step accepted (replay protection)
    created_at: datetime = _utc()  # type: ignore[assignment]


class TechnicianKey(SQLModel, table=True):
    __tablename__ = "technician_key"
    __table_args__ = (UniqueConstraint("technician_id", "fingerprint"),)
    id: int | None = Field(default=None, primary_key=True)
    technician_id: int = Field(foreign_key="technician.id", index=True)
    public_key: str
    fingerprint: str = Field(max_length=100)
    comment: str | None = None


class Approver(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=63)
    email: str = Field(max_length=320)
    disabled: bool = False
    created_at: datetime = _utc()  # type: ignore[assignment]


class ApproverGroup(SQLModel, table=True):
    __tablename__ = "approver_group"
    approver_id: int = Field(foreign_key="approver.id", primary_key=True)
    group: str = Field(primary_key=True, max_length=63)


class Device(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=63)
    host: str = Field(max_length=255)
    port: int = 22
    login_user: str = Field(max_length=100)
    web_url: str | None = None
    model: str | None = None
    firmware: str | None = None
    department: str | None = None
    purpose: str | None = None
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: str = Field(default="active", max_length=20)  # active | maintenance | retired
    rotate: bool = False
    host_key: str | None = None  # pinned on first connection
    created_at: datetime = _utc()  # type: ignore[assignment]
    # -- credential rotation (broker/credentials/rotation.py) --
    rotate_method: str | None = Field(default=None, max_length=20)  # None: by credential kind
    rotation_due_at: datetime | None = _utc(default=None, index=True)  # type: ignore[assignment]
    rotation_reason: str | None = Field(default=None, max_length=200)
    rotation_attempts: int = 0  # failures in a row
    rotation_claimed_by: str | None = Field(default=None, max_length=100)  # node working it
    rotation_claimed_until: datetime | None = _utc(default=None)  # type: ignore[assignment]
    rotated_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    # -- firmware drift (broker/services/firmware.py, migration 0015) --
    probe: str | None = Field(default=None, max_length=500)  # read-only command, admin's
    # the last probe output that differs from ``firmware`` (the accepted baseline), until an
    # admin accepts it; None: no drift
    firmware_observed: str | None = None
    firmware_observed_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    firmware_observed_session: str | None = Field(default=None, max_length=40)


class DeviceCredential(SQLModel, table=True):
    __tablename__ = "device_credential"
    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", index=True)
    kind: str = Field(max_length=20)  # password | key
    secret: bytes = Field(sa_type=LargeBinary)  # vault-encrypted
    owner: str | None = None
    created_at: datetime = _utc()  # type: ignore[assignment]
    # False: a rotation's new secret, not yet confirmed on the device; never used to log in
    current: bool = True


class AccessRequest(SQLModel, table=True):
    __tablename__ = "access_request"
    id: int | None = Field(default=None, primary_key=True)
    technician_id: int = Field(foreign_key="technician.id", index=True)
    device_id: int = Field(foreign_key="device.id", index=True)
    reason: str
    duration_s: int
    requested_start: datetime | None = _utc(default=None)  # type: ignore[assignment]
    protocols: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    state: str = Field(default="pending", max_length=20, index=True)
    policy: str = Field(max_length=200)
    created_at: datetime = _utc()  # type: ignore[assignment]
    expires_at: datetime = _utc()  # type: ignore[assignment]
    decided_at: datetime | None = _utc(default=None)  # type: ignore[assignment]


class Approval(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("request_id", "approver_id"),)
    id: int | None = Field(default=None, primary_key=True)
    request_id: int = Field(foreign_key="access_request.id", index=True)
    approver_id: int = Field(foreign_key="approver.id")
    decision: str = Field(max_length=10)  # approve | deny
    comment: str | None = None
    via: str = Field(max_length=20)  # cli | link | web | api
    created_at: datetime = _utc()  # type: ignore[assignment]


class Grant(SQLModel, table=True):
    __table_args__ = (Index("ix_grant_tech_device", "technician_id", "device_id"),)
    id: int | None = Field(default=None, primary_key=True)
    request_id: int | None = Field(default=None, foreign_key="access_request.id")
    technician_id: int = Field(foreign_key="technician.id")
    device_id: int = Field(foreign_key="device.id")
    protocols: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    start: datetime = _utc()  # type: ignore[assignment]
    end: datetime = _utc()  # type: ignore[assignment]
    state: str = Field(default="scheduled", max_length=20, index=True)
    revoked_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    revoke_reason: str | None = None
    breakglass: bool = False
    reviewed_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    created_at: datetime = _utc()  # type: ignore[assignment]
    # Break-glass (migration 0005): opened without approval, reviewed by an approver afterwards.
    breakglass_reason: str | None = None
    breakglass_by: str | None = Field(default=None, max_length=200)
    reviewed_by: str | None = Field(default=None, max_length=63)
    review_comment: str | None = None


class Session(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=40)
    grant_id: int = Field(foreign_key="grant.id", index=True)
    technician_id: int = Field(foreign_key="technician.id")
    device_id: int = Field(foreign_key="device.id")
    node: str = Field(max_length=100)
    client_addr: str | None = None
    recording: str | None = None  # directory name under the recordings root
    started_at: datetime = _utc()  # type: ignore[assignment]
    ended_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    end_reason: str | None = None
    state: str = Field(default="live", max_length=20)  # live | closed | interrupted
    # Set by any node (CLI, web Kill button, API); the node that holds the session cuts it.
    kill_reason: str | None = Field(default=None, max_length=300)
    # The device's probe before and after the session: its output, or "probe failed: ..."
    probe_before: str | None = None
    probe_after: str | None = None


class FirmwareReading(SQLModel, table=True):
    """The trust record's firmware history: every probe run on a device, and each accepted
    baseline (``phase`` before | after | accepted)."""

    __tablename__ = "firmware_reading"
    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", index=True)
    session_id: str | None = Field(default=None, max_length=40)
    phase: str = Field(max_length=10)
    value: str | None = None  # the normalised output (None: the probe failed)
    error: str | None = Field(default=None, max_length=200)
    changed: bool = False  # differed from what the trust record expected
    actor: str | None = Field(default=None, max_length=200)  # who accepted (phase accepted)
    at: datetime = _utc()  # type: ignore[assignment]


class AuditEvent(SQLModel, table=True):
    __tablename__ = "audit_event"
    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    ts: datetime = _utc()  # type: ignore[assignment]
    kind: str = Field(max_length=60, index=True)
    actor: str = Field(max_length=200)
    subject: str | None = Field(default=None, max_length=200)
    data: str  # canonical JSON
    prev_hash: str = Field(max_length=64, unique=True)
    hash: str = Field(max_length=64)


class AuditCheckpoint(SQLModel, table=True):
    """A signed statement "the audit chain's row ``seq`` had hash ``hash`` at ``at``"
    (``broker.audit.checkpoints``). ``prev`` links each of a node's server checkpoints to the
    one before it; ``digest`` is the SHA-256 of the signed body. A ``legacy`` row (written by
    migration 0011, unsigned) marks the history that predates signed checkpoints."""

    __tablename__ = "audit_checkpoint"
    id: int | None = Field(default=None, primary_key=True)
    node: str = Field(max_length=100, index=True)
    kind: str = Field(max_length=20)  # start | periodic | shutdown | cli | legacy
    seq: int
    hash: str = Field(max_length=64)
    at: datetime = _utc()  # type: ignore[assignment]
    prev: str | None = Field(default=None, max_length=64)
    digest: str = Field(max_length=64, unique=True)
    signature: str = Field(max_length=200)


class IssuedCertificate(SQLModel, table=True):
    """A short-lived OpenSSH user certificate the broker signed for one grant."""

    __tablename__ = "issued_certificate"
    id: int | None = Field(default=None, primary_key=True)
    serial: int = Field(sa_type=BigInteger, unique=True)
    grant_id: int = Field(foreign_key="grant.id", index=True)
    technician_id: int = Field(foreign_key="technician.id")
    key_fingerprint: str = Field(max_length=100)
    key_id: str = Field(max_length=200)
    valid_after: datetime = _utc()  # type: ignore[assignment]
    valid_before: datetime = _utc()  # type: ignore[assignment]
    issued_at: datetime = _utc()  # type: ignore[assignment]
    issued_by: str = Field(max_length=200)


# -- REST API tokens (issue 7, part 3) ---------------------------------------------------------
class ApiToken(SQLModel, table=True):
    """A bearer token for automation. Only the SHA-256 of the token is stored."""

    __tablename__ = "api_token"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=63)
    role: str = Field(max_length=20)  # admin | approver | auditor
    approver_id: int | None = Field(default=None, foreign_key="approver.id")
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = _utc()  # type: ignore[assignment]
    created_by: str = Field(max_length=200)
    expires_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    last_used_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    revoked_at: datetime | None = _utc(default=None)  # type: ignore[assignment]


# -- staff web UI (accounts and their server-side sessions) -------------------------------


class StaffUser(SQLModel, table=True):
    """A hospital staff account for the web UI: approver, auditor or admin."""

    __tablename__ = "staff_user"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=63)
    role: str = Field(max_length=20)  # approver | auditor | admin
    password_hash: str = Field(max_length=200)  # Argon2id (PHC string)
    totp_secret: bytes | None = Field(default=None, sa_type=LargeBinary)  # vault-encrypted
    totp_last_step: int | None = None  # newest TOTP time step accepted (single use)
    approver_name: str | None = Field(default=None, max_length=63)  # decides as this approver
    disabled: bool = False
    created_at: datetime = _utc()  # type: ignore[assignment]
    # set for an account made by OpenID Connect sign-in: the IdP's "sub" (no usable password)
    oidc_subject: str | None = Field(default=None, unique=True, max_length=255)


class StaffSession(SQLModel, table=True):
    """A signed-in browser. Only the SHA-256 of the cookie's random id is stored."""

    __tablename__ = "staff_session"
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True, index=True, max_length=64)
    user_id: int = Field(foreign_key="staff_user.id", index=True)
    mfa_pending: bool = False  # password accepted, TOTP code still owed
    csrf_binding: str = Field(max_length=64)
    address: str | None = Field(default=None, max_length=100)
    via: str = Field(default="password", max_length=10)  # password | oidc
    created_at: datetime = _utc()  # type: ignore[assignment]
    last_seen: datetime = _utc()  # type: ignore[assignment]
    expires_at: datetime = _utc()  # type: ignore[assignment]


class OIDCLogin(SQLModel, table=True):
    """An OpenID Connect sign-in under way (migration 0014): keyed by the SHA-256 of its
    ``state``, bound to the browser by the SHA-256 of a cookie, spent by the callback."""

    __tablename__ = "oidc_login"
    state_hash: str = Field(primary_key=True, max_length=64)
    browser_hash: str = Field(max_length=64)
    nonce: str = Field(max_length=100)
    code_verifier: str = Field(max_length=128)
    next_path: str = Field(max_length=300)
    created_at: datetime = _utc()  # type: ignore[assignment]


# -- approval links and notifications (issue 7, part 1; migration 0006) -----------------------
class UsedApprovalToken(SQLModel, table=True):
    """An approval link's token id, spent by the decision it carried; kept until it expires."""

    __tablename__ = "used_approval_token"
    jti: str = Field(primary_key=True, max_length=64)
    request_id: int = Field(index=True)
    approver: str = Field(max_length=63)
    used_at: datetime = _utc()  # type: ignore[assignment]
    expires_at: datetime = _utc(index=True)  # type: ignore[assignment]


class NotificationCursor(SQLModel, table=True):
    """How far along the audit chain notifications have been planned (one row per feed)."""

    __tablename__ = "notification_cursor"
    name: str = Field(primary_key=True, max_length=40)
    seq: int = 0


class Notification(SQLModel, table=True):
    """One delivery (a webhook POST or an e-mail) owed for one audit event."""

    __table_args__ = (UniqueConstraint("event_seq", "channel", "recipient"),
                      Index("ix_notification_due", "state", "next_attempt_at"))
    id: int | None = Field(default=None, primary_key=True)
    event_seq: int
    kind: str = Field(max_length=60)  # the audit event's kind
    channel: str = Field(max_length=10)  # webhook | email
    recipient: str = Field(max_length=320)  # an e-mail address, or the webhook URL
    payload: str  # JSON: the webhook body, or the e-mail's template and its values
    state: str = Field(default="pending", max_length=10)  # pending | sent | failed
    attempts: int = 0
    next_attempt_at: datetime = _utc()  # type: ignore[assignment]
    lease_until: datetime | None = _utc(default=None)  # type: ignore[assignment]
    leased_by: str | None = Field(default=None, max_length=100)
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = _utc()  # type: ignore[assignment]
    sent_at: datetime | None = _utc(default=None)  # type: ignore[assignment]


# -- device web proxy (issue 8): TLS trust and login per device, sign-in links, web sessions --
class DeviceWeb(SQLModel, table=True):
    """How the broker reaches a device's web UI (``broker device web NAME ...``)."""

    __tablename__ = "device_web"
    device_id: int = Field(foreign_key="device.id", primary_key=True)
    ca_pem: str | None = None  # trust only this CA (PEM) for the device's HTTPS
    pin_sha256: str | None = Field(default=None, max_length=64)  # or exactly this certificate
    allow_http: bool = False  # an http:// web_url is refused unless this was set on purpose
    auth: str = Field(default="none", max_length=10)  # none | basic | digest | form
    form_path: str | None = Field(default=None, max_length=500)
    form_user_field: str = Field(default="username", max_length=100)
    form_password_field: str = Field(default="password", max_length=100)
    updated_at: datetime = _utc()  # type: ignore[assignment]


class WebSignin(SQLModel, table=True):
    """A one-time sign-in link (``ssh TECH@broker weblogin DEVICE``); only its hash is kept."""

    __tablename__ = "web_signin"
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    technician_id: int = Field(foreign_key="technician.id")
    grant_id: int = Field(foreign_key="grant.id", index=True)
    device_id: int = Field(foreign_key="device.id")
    created_at: datetime = _utc()  # type: ignore[assignment]
    expires_at: datetime = _utc()  # type: ignore[assignment]
    used_at: datetime | None = _utc(default=None)  # type: ignore[assignment]


class WebSession(SQLModel, table=True):
    """A browser signed in to one grant's device web UI; its cookie's hash is kept."""

    __tablename__ = "web_session"
    id: str = Field(primary_key=True, max_length=40)
    cookie_hash: str = Field(max_length=64, unique=True)
    grant_id: int = Field(foreign_key="grant.id", index=True)
    technician_id: int = Field(foreign_key="technician.id")
    device_id: int = Field(foreign_key="device.id")
    client_addr: str | None = Field(default=None, max_length=200)
    created_at: datetime = _utc()  # type: ignore[assignment]
    ended_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    end_reason: str | None = Field(default=None, max_length=300)


# -- who is who (issue 16): an approver who is also a technician (migration 0010) -----------
class SamePerson(SQLModel, table=True):
    """An approver account and a technician account held by one person: that approver may
    never decide (or review) the technician's requests and grants, whatever the addresses."""

    __tablename__ = "same_person"
    approver_id: int = Field(foreign_key="approver.id", primary_key=True)
    technician_id: int = Field(foreign_key="technician.id", primary_key=True)
    created_at: datetime = _utc()  # type: ignore[assignment]
    created_by: str = Field(max_length=200)


# -- SIEM stream (issue 18): how far along the audit chain the SIEM has been sent ---------------
class SiemCursor(SQLModel, table=True):
    """The forwarder's cursor (one row, ``name = 'siem'``): every audit event with
    ``seq <= seq`` was sent; the node in ``claimed_by`` forwards until ``claimed_until``."""

    __tablename__ = "siem_cursor"
    name: str = Field(primary_key=True, max_length=40)
    seq: int = 0
    claimed_by: str | None = Field(default=None, max_length=100)
    claimed_until: datetime | None = _utc(default=None)  # type: ignore[assignment]
    last_sent_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    last_error: str | None = Field(default=None, max_length=500)
    last_error_at: datetime | None = _utc(default=None)  # type: ignore[assignment]


# -- vendor self-service (issue 20): invitations and the vendor contact's sign-in (0015) -------
class Invitation(SQLModel, table=True):
    """An e-mailed onboarding link for one technician of one vendor. Only the SHA-256 of the
    link's secret is stored. ``state``: ``open`` (not used yet), ``pending`` (used: the
    technician exists, disabled, awaiting a hospital admin), ``approved``, ``rejected``."""

    id: int | None = Field(default=None, primary_key=True)
    vendor_id: int = Field(foreign_key="vendor.id", index=True)
    email: str = Field(max_length=320)
    name: str | None = Field(default=None, max_length=63)  # the suggested user name
    token_hash: str = Field(unique=True, max_length=64)
    state: str = Field(default="open", max_length=16, index=True)
    expires_at: datetime = _utc()  # type: ignore[assignment]
    created_by: str = Field(max_length=200)
    created_at: datetime = _utc()  # type: ignore[assignment]
    used_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    technician_id: int | None = Field(default=None, foreign_key="technician.id", index=True)
    decided_by: str | None = Field(default=None, max_length=200)
    decided_at: datetime | None = _utc(default=None)  # type: ignore[assignment]


class VendorLogin(SQLModel, table=True):
    """A vendor contact's e-mailed sign-in link and, once spent, the browser session it
    opened. Only SHA-256 hashes of the link's and the cookie's secrets are stored."""

    __tablename__ = "vendor_login"
    id: int | None = Field(default=None, primary_key=True)
    vendor_id: int = Field(foreign_key="vendor.id", index=True)
    email: str = Field(max_length=320)
    token_hash: str = Field(unique=True, max_length=64)
    link_expires_at: datetime = _utc()  # type: ignore[assignment]
    used_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    session_hash: str | None = Field(default=None, unique=True, max_length=64)
    csrf_binding: str | None = Field(default=None, max_length=64)
    session_expires_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    created_at: datetime = _utc()  # type: ignore[assignment]
