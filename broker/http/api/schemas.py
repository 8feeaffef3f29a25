"""Every body the REST API accepts or returns, as pydantic models.

Inputs are strict (no type coercion in JSON bodies), reject unknown fields and bound every
length; the OpenAPI document is generated from these same classes, so the document and the
validation cannot disagree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

from broker.domain.protocols import Protocol
from broker.domain.requests import RequestState
from broker.domain.text import (
    DECISION_COMMENT,
    KILL_REASON,
    REQUEST_REASON,
    REVOKE_REASON,
    TextError,
    TextKind,
    check_kind,
)
from broker.domain.usernames import NAME_PATTERN

MAX_ID = 2**31 - 1  # ids and audit seq are INTEGER columns: 4 bytes on PostgreSQL
MAX_DURATION_S = 366 * 86400
PAGE_MAX = 500


def _free_text(kind: TextKind) -> Any:
    """A free-text field under the one text rule (broker/domain/text.py), checked here as
    the services check it for every channel: 422 naming the field, like every body field."""

    def check(value: str) -> str:
        try:
            cleaned = check_kind(kind, value)
        except TextError as exc:
            raise PydanticCustomError("free_text", exc.detail) from None
        if kind.required and not cleaned:
            raise PydanticCustomError("free_text", "must not be blank")
        return cleaned

    return (Field(max_length=kind.limit, description="one line of printable text: no"
                  " control, bidi-override or line-separator characters"),
            AfterValidator(check))


def _utc(value: datetime) -> datetime:
    """Times far enough from the ends of the calendar that windows computed from them fit."""
    if not 2000 <= value.year <= 9000:
        raise ValueError("must be between the years 2000 and 9000")
    return value.astimezone(UTC)


Name = Annotated[str, Field(min_length=1, max_length=63, pattern=NAME_PATTERN.pattern.replace(
    r"\Z", "$"))]
Text = Annotated[str, *_free_text(DECISION_COMMENT)]
RevokeReason = Annotated[str, *_free_text(REVOKE_REASON)]
KillReason = Annotated[str, *_free_text(KILL_REASON)]
Moment = Annotated[AwareDatetime, AfterValidator(_utc)]
Ident = Annotated[int, Field(ge=1, le=MAX_ID)]
SessionId = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9._-]+$")]


class _In(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _Query(BaseModel):
    # Query strings are text: numbers are parsed from them, everything else stays strict.
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- errors ----------------------------------------------------------------------------------
class Error(_Out):
    """Every failure: one line naming what is wrong, and the field at fault if there is one."""

    error: str
    status: int
    field: str | None = None


# -- path and query parameters ---------------------------------------------------------------
class IdPath(_Query):
    id: Ident


class NamePath(_Query):
    name: Name


class SessionPath(_Query):
    id: SessionId


class Page(_Query):
    limit: Annotated[int, Field(ge=1, le=PAGE_MAX)] = 100


class IdPage(Page):
    after: Annotated[int, Field(ge=0, le=MAX_ID)] | None = None


class NamePage(Page):
    after: Name | None = None


class SessionPage(Page):
    after: SessionId | None = None


class RequestQuery(IdPage):
    state: RequestState | None = None


class GrantQuery(IdPage):
    active: bool = False
    unreviewed: bool = False


class RecordingQuery(SessionPage):
    technician: Name | None = None
    device: Name | None = None
    vendor: Annotated[str, Field(min_length=1, max_length=200)] | None = None
    grant: Ident | None = None
    since: Moment | None = None
    until: Moment | None = None


class AuditQuery(IdPage):
    since: Moment | None = None
    kind: Annotated[str, Field(min_length=1, max_length=60, pattern=r"^[a-z0-9_.]+$",
                               description="an exact kind (grant.revoked), or a prefix ending "
                                           "in '.' (grant.)")] | None = None


# -- request bodies --------------------------------------------------------------------------
class RequestCreate(_In):
    technician: Name
    device: Name
    duration_s: Annotated[int, Field(ge=60, le=MAX_DURATION_S)]
    reason: Annotated[str, Field(min_length=1), *_free_text(REQUEST_REASON)]
    start: Moment | None = None
    protocols: Annotated[list[Protocol], Field(min_length=1, max_length=5)] | None = None


class DecisionIn(_In):
    comment: Text | None = None


class RevokeIn(_In):
    reason: RevokeReason | None = None


class KillIn(_In):
    reason: KillReason | None = None


# -- responses -------------------------------------------------------------------------------
class DecisionRecord(_Out):
    approver: str
    decision: str
    comment: str | None
    via: str
    at: datetime


class RequestOut(_Out):
    id: int
    state: str
    technician: str
    vendor: str
    device: str
    reason: str
    duration_s: int
    requested_start: datetime | None
    protocols: list[str]
    policy: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decisions: list[DecisionRecord]
    grant: int | None


class RequestList(_Out):
    items: list[RequestOut]
    next: int | None = Field(description="pass as 'after' for the next page; null at the end")


class DecisionOut(_Out):
    request: int
    state: str
    grant: int | None
    still_needed: list[str]


class GrantOut(_Out):
    id: int
    state: str
    technician: str
    vendor: str
    device: str
    protocols: list[str]
    start: datetime
    end: datetime
    request: int | None
    breakglass: bool
    reviewed_at: datetime | None
    revoked_at: datetime | None
    revoke_reason: str | None
    breakglass_reason: str | None = None
    breakglass_by: str | None = None
    reviewed_by: str | None = None
    review_comment: str | None = None
    review: str | None = Field(default=None, description="break-glass review: open or done; "
                                                          "null for approved grants")


class GrantList(_Out):
    items: list[GrantOut]
    next: int | None


class DeviceOut(_Out):
    id: int
    name: str
    host: str
    port: int
    login_user: str
    web_url: str | None
    model: str | None
    firmware: str | None
    department: str | None
    purpose: str | None
    tags: list[str]
    state: str
    rotate: bool
    host_key_pinned: bool
    created_at: datetime
    probe: str | None = Field(description="the read-only firmware probe run before and after"
                                          " each session (null: none)")
    firmware_observed: str | None = Field(description="what the probe last reported, when it"
                                                      " differs from the firmware baseline and"
                                                      " no admin accepted it yet")
    firmware_observed_at: datetime | None
    firmware_drift: bool = Field(description="true while firmware_observed waits for"
                                             " acceptance")


class DeviceList(_Out):
    items: list[DeviceOut]
    next: str | None


class SessionOut(_Out):
    id: str
    state: str
    grant: int
    technician: str
    device: str
    node: str
    client: str | None
    recording: str | None
    started_at: datetime
    kill_reason: str | None


class SessionList(_Out):
    items: list[SessionOut]
    next: str | None


class RecordingOut(_Out):
    id: str
    technician: str | None
    vendor: str | None
    device: str | None
    grant: int | None
    client: str | None
    started_at: datetime
    ended_at: datetime | None
    end_reason: str | None
    files: list[str]
    sealed: bool
    hold: bool


class RecordingList(_Out):
    items: list[RecordingOut]
    next: str | None


class RecordingDetail(RecordingOut):
    verified: bool
    problems: list[str]
    in_database: bool
    request: RequestOut | None


class RecordingVerify(_Out):
    session: str
    ok: bool
    problems: list[str]


class AuditEventOut(_Out):
    seq: int
    ts: datetime
    kind: str
    actor: str
    subject: str | None
    data: dict[str, Any]
    prev_hash: str
    hash: str


class AuditList(_Out):
    items: list[AuditEventOut]
    next: int | None


class ChainProblemOut(_Out):
    seq: int | None  # None: a finding about the signed checkpoints, not one row
    message: str


class AuditVerify(_Out):
    ok: bool
    rows: int
    problems: list[ChainProblemOut]


# -- vendors and invitations (issue 20) -------------------------------------------------------
VendorName = Annotated[str, Field(min_length=1, max_length=200)]
Email = Annotated[str, Field(min_length=3, max_length=320)]
DurationText = Annotated[str, Field(min_length=2, max_length=10, pattern=r"^[0-9]+[smhd]$")]


class VendorPath(_Query):
    name: VendorName


class InvitationQuery(_Query):
    vendor: VendorName | None = None
    state: Annotated[str, Field(
        pattern=r"^(open|expired|pending|approved|rejected|withdrawn)$")] | None = None


class InvitationPath(_Query):
    id: Annotated[int, Field(ge=1, le=2**31 - 1)]


class InvitationCreate(_In):
    email: Email
    name: Name | None = None
    expires: DurationText = "7d"


class VendorTechnician(_Out):
    name: str
    email: str | None
    state: str  # enabled, disabled, expired, vendor-disabled, contract-ended, pending, rejected
    last_login_at: datetime | None
    expires_at: datetime | None


class VendorOut(_Out):
    id: int
    name: str
    domains: list[str]
    contact: str | None
    contract_end: datetime | None
    contract_state: str  # active, ending soon, ended, disabled
    disabled: bool
    technicians: list[VendorTechnician]
    pending: list[str]  # technicians waiting for approval


class VendorList(_Out):
    items: list[VendorOut]


class InvitationOut(_Out):
    id: int
    vendor: str
    email: str
    name: str | None
    state: str  # open, expired, pending, approved, rejected, withdrawn
    technician: str | None
    expires_at: datetime
    created_by: str
    created_at: datetime
    used_at: datetime | None
    decided_by: str | None
    decided_at: datetime | None


class InvitationList(_Out):
    items: list[InvitationOut]
