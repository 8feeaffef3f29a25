"""Who may reach which device: vendors, technicians and their keys, approvers, devices and
their credentials, requests, approvals, grants, sessions, invitations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from broker.store.models._fields import _utc


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


# -- who is who (issue 16): an approver who is also a technician (migration 0010) -----------
class SamePerson(SQLModel, table=True):
    """An approver account and a technician account held by one person: that approver may
    never decide (or review) the technician's requests and grants, whatever the addresses."""

    __tablename__ = "same_person"
    approver_id: int = Field(foreign_key="approver.id", primary_key=True)
    technician_id: int = Field(foreign_key="technician.id", primary_key=True)
    created_at: datetime = _utc()  # type: ignore[assignment]
    created_by: str = Field(max_length=200)


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
