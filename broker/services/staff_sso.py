"""Staff accounts from the hospital's identity provider: the claims of a verified ID token
mapped to a role and an approver, the account made or updated at every sign-in, and the
sign-ins under way (one use each). The protocol side (discovery, JWKS, the redirects) is
:mod:`broker.http.staff.oidc`."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from datetime import timedelta
from typing import Any

from sqlmodel import col, delete, select

from broker.config import OIDCSection
from broker.services.context import Context
from broker.store.models import Approver, OIDCLogin, StaffSession, StaffUser

__all__ = ["LOGIN_TTL", "NO_PASSWORD", "ROLE_ORDER", "Refused", "account_for", "begin_login",
           "role_for", "signed_in", "spend_login", "staff_name"]

LOGIN_TTL = timedelta(minutes=10)  # from the redirect to the IdP to the callback
ROLE_ORDER = ("admin", "auditor", "approver")  # the highest mapped role wins
NO_PASSWORD = "!oidc: signs in with the identity provider only"  # never a valid Argon2 hash
_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


class Refused(Exception):
    """A sign-in the broker will not complete: ``reason`` for the audit log, ``status`` and
    ``message`` for the visitor."""

    def __init__(self, reason: str, status: int = 403, message: str | None = None,
                 actor: str = "anonymous", **data: object) -> None:
        super().__init__(reason)
        self.reason, self.status, self.actor, self.data = reason, status, actor, data
        self.message = message or ("The sign-in could not be completed. Please start again "
                                   "from the sign-in page.")


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def role_for(settings: OIDCSection, claims: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The broker role the claims give (the highest mapped), and the groups seen."""
    raw = claims.get(settings.group_claim, [])
    groups = [raw] if isinstance(raw, str) else [str(g) for g in raw] \
        if isinstance(raw, list) else []
    found = {role for role, names in settings.roles.items() if set(names) & set(groups)}
    if settings.role_claim:
        named = claims.get(settings.role_claim)
        for value in [named] if isinstance(named, str) else named or []:
            if value in ROLE_ORDER:
                found.add(str(value))
    return next((role for role in ROLE_ORDER if role in found), None), groups


def staff_name(settings: OIDCSection, claims: dict[str, Any]) -> str:
    raw = str(claims.get(settings.username_claim) or claims.get("email") or claims["sub"])
    name = _NAME_CHARS.sub("-", raw).strip("-._")[:63]
    return name or _sha(str(claims["sub"]))[:20]


async def _approver_for(ctx: Context, claims: dict[str, Any]) -> str | None:
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is False:
        return None
    async with ctx.store.session() as db:
        for approver in (await db.exec(select(Approver).where(
                col(Approver.disabled).is_(False)))).all():
            if approver.email.strip().lower() == email.strip().lower():
                return approver.name
    return None


def _check_role(settings: OIDCSection, claims: dict[str, Any], role: str | None,
                groups: list[str], actor: str, approver: str | None) -> str | None:
    """The approver this role decides as; Refused when the claims give no usable role."""
    if role is None:
        if settings.group_claim in (claims.get("_claim_names") or {}):
            # Entra ID's "overage": too many groups for the token, only a link to them
            raise Refused("groups overage", 403, (
                "You belong to too many groups for the identity provider to list them in the "
                "sign-in token. Ask your administrator to limit the groups claim to the "
                "broker's groups (or to use app roles)."), actor=actor)
        raise Refused("no mapped group", 403, (
            "You signed in, but none of your groups gives access to the broker. Ask your "
            "administrator to add you to one of the broker's groups."),
            actor=actor, groups=groups[:20])
    if role == "approver" and approver is None:
        raise Refused("no approver with this e-mail", 403, (
            "Your account maps to the approver role, but no registered approver has your "
            "e-mail address. Ask your administrator to register you as an approver."),
            actor=actor, email=str(claims.get("email", ""))[:320])
    return approver


async def account_for(ctx: Context, settings: OIDCSection, claims: dict[str, Any]
                      ) -> StaffUser:
    """The staff account of these verified claims, made or updated (role, approver) now."""
    subject = str(claims["sub"])[:255]
    name = staff_name(settings, claims)
    role, groups = role_for(settings, claims)
    actor = f"staff:{name}"
    try:
        approver = _check_role(settings, claims, role, groups, actor,
                               await _approver_for(ctx, claims))
    except Refused:
        # The IdP no longer gives this person a usable role: end what is still open.
        async with ctx.store.session() as db:
            user = (await db.exec(select(StaffUser).where(
                StaffUser.oidc_subject == subject))).first()
            if user is not None:
                await db.exec(delete(StaffSession).where(col(StaffSession.user_id) == user.id))
        raise
    assert role is not None  # _check_role refused otherwise
    async with ctx.store.session() as db:
        user = (await db.exec(select(StaffUser).where(
            StaffUser.oidc_subject == subject))).first()
        if user is None:
            taken = (await db.exec(select(StaffUser).where(StaffUser.name == name))).first()
            if taken is not None:
                raise Refused("name taken by another account", 403, (
                    f"A broker account named {name!r} already exists. Ask your administrator "
                    "to rename or remove it."), actor=actor)
            user = StaffUser(name=name, role=role, password_hash=NO_PASSWORD,
                             approver_name=approver, oidc_subject=subject,
                             created_at=ctx.now())
            db.add(user)
            await ctx.audit(db, "staff.added", "oidc", f"staff:{name}", role=role,
                            approver=approver, via="oidc")
        else:
            if user.disabled:
                raise Refused("account disabled", 403, (
                    "This account is disabled in the broker."), actor=f"staff:{user.name}")
            if (user.role, user.approver_name) != (role, approver):
                await ctx.audit(db, "staff.role_changed", "oidc", f"staff:{user.name}",
                                old=user.role, new=role, approver=approver, groups=groups[:20])
                user.role, user.approver_name = role, approver
                db.add(user)
        await db.flush()
        await db.refresh(user)
    return user


# -- sign-ins under way -----------------------------------------------------------------


async def begin_login(ctx: Context, state: str, browser: str, nonce: str, verifier: str,
                      next_path: str) -> None:
    """Remember a sign-in sent to the provider (its state and browser binding as hashes)."""
    now = ctx.now()
    async with ctx.store.session() as db:
        await db.exec(delete(OIDCLogin).where(col(OIDCLogin.created_at) < now - LOGIN_TTL))
        db.add(OIDCLogin(state_hash=_sha(state), browser_hash=_sha(browser), nonce=nonce,
                         code_verifier=verifier, next_path=next_path[:300], created_at=now))


async def spend_login(ctx: Context, state: str, browser: str) -> OIDCLogin:
    """The sign-in this ``state`` started, deleted (one use), checked against the browser."""
    async with ctx.store.session() as db:
        login = await db.get(OIDCLogin, _sha(state)) if state and len(state) <= 200 else None
        if login is None:
            raise Refused("state unknown or already used" if state else "state missing", 400)
        await db.delete(login)
    if not browser or not hmac.compare_digest(_sha(browser), login.browser_hash):
        raise Refused("state from another browser", 400)
    if ctx.now() - login.created_at > LOGIN_TTL:
        raise Refused("sign-in took too long", 400, "The sign-in took too long. Please start "
                      "again from the sign-in page.")
    return login


async def signed_in(ctx: Context, user: StaffUser, address: str | None,
                    claims: dict[str, Any]) -> None:
    async with ctx.store.session() as db:
        await ctx.audit(db, "staff.login_succeeded", f"staff:{user.name}",
                        f"staff:{user.name}", address=address or "unknown",
                        role=user.role, via="oidc", mfa=None,
                        amr=json.dumps(claims.get("amr"))[:100])
