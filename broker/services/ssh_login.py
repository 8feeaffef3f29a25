"""What the SSH server needs to know when a technician names themself: their keys, the
principals a certificate may carry for the device named, and whether the policy demands a
TOTP code. One read of the store, because every session's login waits for it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam
from sqlmodel import Session, col, select

from broker.credentials.certs import grant_principal
from broker.domain.grants import GrantState
from broker.services.context import Context
from broker.services.lookup import maybe_named
from broker.services.policies import decide
from broker.store.models import Device, Grant, Technician, TechnicianKey


@dataclass(frozen=True)
class LoginFacts:
    keys: list[str]  # the technician's registered public keys (authorized_keys lines)
    # grant-<id> for each grant on the device that is not over: the only principals a
    # certificate may name to open TECH+DEVICE now
    principals: list[str]
    totp_required: bool  # the policy for this technician and device demands a code
    totp_enrolled: bool  # the technician has a TOTP secret


async def login_facts(ctx: Context, tech_name: str, device_name: str | None
                      ) -> LoginFacts | None:
    """The facts for ``tech_name`` logging in to ``device_name`` (None: the menu), or None
    when there is no such technician."""
    found = await ctx.store.run(_read, tech_name, device_name, ctx.now())
    if found is None:
        return None
    tech, keys, device, grant_ids = found
    required = False
    if device is not None:
        decision = decide(ctx.policies(), tech, device)
        required = bool(decision.allowed and decision.policy
                        and decision.policy.rules.require_totp)
    return LoginFacts(keys, [grant_principal(g) for g in grant_ids if g is not None], required,
                      tech.totp_secret is not None)


# built once (building and keying a statement costs more than running it)
_KEYS = select(TechnicianKey.public_key).where(TechnicianKey.technician_id == bindparam("tech"))
_GRANT_IDS = select(Grant.id).where(
    Grant.technician_id == bindparam("tech"), Grant.device_id == bindparam("device"),
    Grant.end > bindparam("now"), col(Grant.revoked_at).is_(None),
    Grant.state != GrantState.REVOKED.value)


def _read(db: Session, tech_name: str, device_name: str | None, now: datetime
          ) -> tuple[Technician, list[str], Device | None, list[int | None]] | None:
    tech = maybe_named(db, Technician, tech_name)
    if tech is None:
        return None
    keys = list(db.exec(_KEYS, params={"tech": tech.id}).all())
    device = maybe_named(db, Device, device_name) if device_name is not None else None
    grant_ids = [] if device is None else list(db.exec(
        _GRANT_IDS, params={"tech": tech.id, "device": device.id, "now": now}).all())
    return tech, keys, device, grant_ids
