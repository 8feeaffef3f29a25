"""Hospital staff: accounts, their sessions, single sign-on logins, API tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import LargeBinary
from sqlmodel import Field, SQLModel

from broker.store.models._fields import _utc


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
