"""The broker's tables. Schema changes go through Alembic (``broker/store/migrations``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, Column, Index, LargeBinary, UniqueConstraint
from sqlmodel import Field, SQLModel

from broker.store.types import UTCDateTime


def _utc(**kwargs: object) -> object:
    return Field(sa_type=UTCDateTime, **kwargs)  # type: ignore[call-overload]


class Technician(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=63)
    vendor: str = Field(max_length=200)
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


class DeviceCredential(SQLModel, table=True):
    __tablename__ = "device_credential"
    id: int | None = Field(default=None, primary_key=True)
    device_id: int = Field(foreign_key="device.id", index=True)
    kind: str = Field(max_length=20)  # password | key
    secret: bytes = Field(sa_type=LargeBinary)  # vault-encrypted
    owner: str | None = None
    created_at: datetime = _utc()  # type: ignore[assignment]
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
