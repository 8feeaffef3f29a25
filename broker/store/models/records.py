"""What the broker keeps as evidence and state of its own: the audit chain and its
checkpoints, issued certificates, the SIEM and notification cursors, spent approval tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from broker.store.models._fields import _utc


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
