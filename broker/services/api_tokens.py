"""Bearer tokens for the REST API: created (shown once), listed, revoked, and checked.

A token is ``vab_`` + 32 random bytes (URL-safe base64). Only its SHA-256 is stored, so a
database leak gives no usable token; a presented token is found by its hash, which also
makes the look-up independent of how much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlmodel import col, select

from broker.errors import Conflict, NotFound, UsageError
from broker.services.context import Context
from broker.services.directory import valid_name
from broker.services.lookup import by_name
from broker.store.models import ApiToken, Approver

PREFIX = "vab_"
TOKEN_SHAPE = re.compile(r"vab_[A-Za-z0-9_-]{43}")  # PREFIX + token_urlsafe(32)
# last_used_at is written at most this often per token, so reads don't all become writes.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class Role(StrEnum):
    ADMIN = "admin"        # everything
    APPROVER = "approver"  # read requests, grants, devices; approve/deny as its approver
    AUDITOR = "auditor"    # read everything, change nothing


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class TokenView:
    token: ApiToken
    approver: str | None

    def state(self, now: datetime) -> str:
        if self.token.revoked_at is not None:
            return "revoked"
        if self.token.expires_at is not None and self.token.expires_at <= now:
            return "expired"
        return "active"


@dataclass(frozen=True)
class Caller:
    """Who an API request comes from: the token's name and role, and its approver if any."""

    name: str
    role: Role
    approver: str | None

    @property
    def actor(self) -> str:
        return f"api:{self.name}"


class ApiTokens:
    def __init__(self, ctx: Context, actor: str) -> None:
        self.ctx, self.actor = ctx, actor

    async def create(self, name: str, role: str, approver: str | None = None,
                     lifetime: timedelta | None = None) -> tuple[TokenView, str]:
        """Make a token; return it with the secret, which is never available again."""
        valid_name("token", name)
        try:
            kind = Role(role)
        except ValueError:
            raise UsageError(f"--role {role!r}: choose admin, approver or auditor") from None
        if (kind is Role.APPROVER) != (approver is not None):
            raise UsageError("--approver NAME is required for --role approver, "
                             "and only for it")
        if lifetime is not None and lifetime <= timedelta(0):
            raise UsageError("--expires must be a positive duration")
        secret = PREFIX + secrets.token_urlsafe(32)
        now = self.ctx.now()
        async with self.ctx.store.session() as db:
            if (await db.exec(select(ApiToken).where(ApiToken.name == name))).first():
                raise Conflict(f"API token {name!r} already exists")
            approver_row = await by_name(db, Approver, approver) if approver else None
            row = ApiToken(name=name, role=kind.value,
                           approver_id=approver_row.id if approver_row else None,
                           token_hash=token_hash(secret), created_at=now, created_by=self.actor,
                           expires_at=now + lifetime if lifetime else None)
            db.add(row)
            await db.flush()
            await self.ctx.audit(db, "api_token.created", self.actor, f"api_token:{name}",
                                 role=kind.value, approver=approver,
                                 expires_at=row.expires_at.isoformat() if row.expires_at
                                 else None)
        return TokenView(row, approver), secret

    async def find(self) -> list[TokenView]:
        async with self.ctx.store.session() as db:
            rows = (await db.exec(select(ApiToken, Approver).join(Approver, isouter=True)
                                  .order_by(col(ApiToken.name)))).all()
        return [TokenView(token, approver.name if approver else None)
                for token, approver in rows]

    async def revoke(self, name: str) -> TokenView:
        async with self.ctx.store.session() as db:
            row = (await db.exec(select(ApiToken).where(ApiToken.name == name))).first()
            if row is None:
                raise NotFound(f"no API token named {name!r}")
            if row.revoked_at is not None:
                raise Conflict(f"API token {name!r} is already revoked")
            row.revoked_at = self.ctx.now()
            db.add(row)
            approver = await db.get(Approver, row.approver_id) if row.approver_id else None
            await self.ctx.audit(db, "api_token.revoked", self.actor, f"api_token:{name}")
        return TokenView(row, approver.name if approver else None)


async def authenticate(ctx: Context, presented: str) -> Caller | None:
    """The caller a presented token stands for, or None if it is unknown, revoked or expired
    (or its approver is disabled)."""
    if not TOKEN_SHAPE.fullmatch(presented):
        return None  # not even shaped like a token: no database work for junk
    digest = token_hash(presented)
    now = ctx.now()
    async with ctx.store.session() as db:
        row = (await db.exec(select(ApiToken).where(ApiToken.token_hash == digest))).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
            return None
        approver = await db.get(Approver, row.approver_id) if row.approver_id else None
        if row.role == Role.APPROVER and (approver is None or approver.disabled):
            return None
        if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
            row.last_used_at = now
            db.add(row)
        return Caller(row.name, Role(row.role), approver.name if approver else None)
