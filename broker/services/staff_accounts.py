"""Staff accounts for the web UI: Argon2id passwords, an optional TOTP second factor, roles.

Roles and what each may do (checked on every route, see :data:`PERMISSIONS`):

* ``approver``: the dashboard, requests (approve/deny as the linked approver), grants
  (read), and reviews of break-glass grants.
* ``auditor``: read everything (requests, grants, devices, the audit log), recordings and
  the player, live sessions with Watch, and Kill (security staff must be able to stop a
  session they are watching).
* ``admin``: everything, including Revoke, opening break-glass grants and accepting a
  device's new firmware baseline.

Every role may ``supervise`` a live SSH session (watch it, pause or resume the technician's
input, end it: :mod:`broker.http.staff.supervise`), which sessions under a policy's
``supervision: required`` need before they go on.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlmodel import col, delete, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.errors import Conflict, NotFound, UsageError
from broker.services import totp
from broker.services.context import Context
from broker.services.directory import valid_name
from broker.services.lookup import by_name
from broker.store.models import Approver, StaffSession, StaffUser

ROLES = ("approver", "auditor", "admin")
PERMISSIONS: dict[str, frozenset[str]] = {
    "approver": frozenset({"dashboard", "requests", "decide", "grants", "review",
                           "supervise"}),
    "auditor": frozenset({"dashboard", "requests", "grants", "sessions", "watch", "kill",
                          "recordings", "audit", "devices", "supervise", "vendors"}),
    "admin": frozenset({"dashboard", "requests", "decide", "grants", "review", "sessions",
                        "watch", "kill", "recordings", "audit", "devices", "revoke",
                        "breakglass", "supervise", "firmware", "vendors", "onboard"}),
}
MIN_PASSWORD = 12
MAX_PASSWORD = 1024
ISSUER = "Vendor Access Broker (staff)"

_hasher = PasswordHasher()  # Argon2id, the library's current recommended parameters


@functools.cache
def _dummy_hash() -> str:
    """Checked when the name is unknown, so that a miss costs as much time as a wrong
    password (made on first use: hashing at import would slow every CLI command)."""
    return _hasher.hash("not-a-password-of-anyone")


def may(role: str, permission: str) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"the password must be at least {MIN_PASSWORD} characters long")
    if len(password) > MAX_PASSWORD:
        raise UsageError(f"the password must be at most {MAX_PASSWORD} characters long")
    return _hasher.hash(password)


def _password_matches(stored: str, password: str) -> bool:
    try:
        return _hasher.verify(stored, password[:MAX_PASSWORD])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class LoginCheck:
    """The outcome of a password check: the user when it passed, else why not (for the
    audit log only: the visitor always sees the same message)."""

    user: StaffUser | None
    reason: str | None


async def check_password(ctx: Context, name: str, password: str) -> LoginCheck:
    """Is ``password`` right for an enabled account ``name``? Always one Argon2 check, so
    the time taken says nothing about whether the account exists."""
    async with ctx.store.session() as db:
        user = (await db.exec(select(StaffUser).where(StaffUser.name == name))).first()
    stored = user.password_hash if user is not None else _dummy_hash()
    matches = await asyncio.to_thread(_password_matches, stored, password)
    if user is None:
        return LoginCheck(None, "unknown user")
    if not matches:
        return LoginCheck(None, "wrong password")
    if user.disabled:
        return LoginCheck(None, "account disabled")
    return LoginCheck(user, None)


async def check_totp(ctx: Context, user_id: int, code: str) -> str | None:
    """None if ``code`` is the user's valid, not yet used TOTP code now; else why not
    (the one verifier, :func:`broker.services.totp.check_code`)."""
    async with ctx.store.session() as db:
        user = await db.get(StaffUser, user_id)
        if user is None or user.disabled:
            return "account disabled"
        return await totp.check_code(ctx, db, user, code)


class StaffAccounts:
    """Adding, listing, disabling staff accounts and enrolling their TOTP (the CLI's side)."""

    def __init__(self, ctx: Context, actor: str) -> None:
        self.ctx, self.actor = ctx, actor

    async def add(self, name: str, role: str, password: str,
                  approver: str | None = None) -> StaffUser:
        valid_name("staff user", name)
        if role not in ROLES:
            raise UsageError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
        if role == "approver" and approver is None:
            raise UsageError("--approver NAME is required for the approver role (the "
                             "registered approver this account decides as)")
        if approver is not None and role == "auditor":
            raise UsageError("--approver: an auditor does not decide requests; use the "
                             "approver or admin role")
        hashed = await asyncio.to_thread(hash_password, password)
        async with self.ctx.store.session() as db:
            if approver is not None:
                await by_name(db, Approver, approver)
            if (await db.exec(select(StaffUser).where(StaffUser.name == name))).first():
                raise Conflict(f"staff user {name!r} already exists")
            user = StaffUser(name=name, role=role, password_hash=hashed, approver_name=approver,
                             created_at=self.ctx.now())
            db.add(user)
            await self.ctx.audit(db, "staff.added", self.actor, f"staff:{name}", role=role,
                                 approver=approver)
        return user

    async def users(self) -> list[StaffUser]:
        async with self.ctx.store.session() as db:
            return list((await db.exec(select(StaffUser).order_by(col(StaffUser.name)))).all())

    async def disable(self, name: str) -> StaffUser:
        """Disable the account and end every session it has."""
        async with self.ctx.store.session() as db:
            user = await _user(db, name)
            user.disabled = True
            db.add(user)
            await db.exec(delete(StaffSession).where(
                col(StaffSession.user_id) == user.id))
            await self.ctx.audit(db, "staff.disabled", self.actor, f"staff:{name}")
        return user

    async def enroll_totp(self, name: str) -> tuple[str, str]:
        """A new TOTP secret for ``name`` (replacing any old one): the secret and its
        ``otpauth://`` URI."""
        secret = pyotp.random_base32()
        uri = pyotp.TOTP(secret).provisioning_uri(name=name, issuer_name=ISSUER)
        async with self.ctx.store.session() as db:
            user = await _user(db, name)
            replaced = user.totp_secret is not None
            user.totp_secret = self.ctx.vault.seal(secret.encode())
            user.totp_last_step = None
            db.add(user)
            await self.ctx.audit(db, "staff.totp_enrolled", self.actor, f"staff:{name}",
                                 replaced=replaced)
        return secret, uri


async def _user(db: AsyncSession, name: str) -> StaffUser:
    user = (await db.exec(select(StaffUser).where(StaffUser.name == name))).first()
    if user is None:
        raise NotFound(f"no staff user named {name!r} (see 'broker staff list')")
    return user


def describe(user: StaffUser) -> dict[str, object]:
    return {"name": user.name, "role": user.role, "approver": user.approver_name,
            "totp": user.totp_secret is not None, "disabled": user.disabled,
            "sign_in": "oidc" if user.oidc_subject is not None else "password",
            "created_at": user.created_at}
