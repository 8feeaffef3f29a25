"""Rotating a device's credential: a new secret is made, set on the device over the broker's
own SSH session, proved by a fresh login, and only then made the vault's current secret.

Crash and failure safety: the new secret is vaulted first as a *pending* credential
(``current=False``, never used to log in). Whatever happens next, the vault holds every
secret that may be the working one; :func:`_settle` later finds out which one works, keeps
it as current and drops the other. The technician never sees either secret; neither is
logged nor audited.

When: a few seconds after a grant on a ``rotate`` device ends (never under a session of that
grant still being cut), on ``broker device rotate NAME``, and as a retired device's final
rotation. Live sessions of *other* grants are not waited for: an established SSH session
does not depend on the secret it logged in with, and new logins read the vault, which is
updated right after a fresh login proved the new secret. Failures are retried with back-off
(``broker.domain.rotation.retry_delay``) by ``broker.revocation.rotator.Rotator``."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import asyncssh
import structlog
from sqlmodel import col, delete

from broker.credentials import device_ops
from broker.domain.rotation import RotationError, RotationMethod, key_blob, method_for
from broker.domain.rotation import with_key_added as _added
from broker.domain.rotation import without_keys as _without
from broker.errors import Conflict, DeviceError, NotFound, Refused, StoreError
from broker.services import rotations
from broker.services.context import Context
from broker.services.lookup import by_name
from broker.services.sessions import DeviceLogin, device_login
from broker.ssh.upstream import connect_device
from broker.store.models import Device, DeviceCredential

log = structlog.get_logger("broker.rotation")
T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    device: str
    ok: bool
    detail: str  # one line: what happened
    method: str | None = None
    fingerprint: str | None = None
    retry_at: datetime | None = None
    secrets_deleted: bool = False


class _StepFailed(Exception):
    def __init__(self, step: str, error: str) -> None:
        super().__init__(f"{step}: {error}")
        self.step, self.error = step, error


@dataclass
class _Plan:
    device: Device
    current: DeviceCredential
    method: RotationMethod
    login: DeviceLogin  # logs in with the current secret
    pending_id: int | None = None  # this run's new secret, vaulted before the device has it
    touched: bool = False  # a change was sent to the device: which secret works is open


async def rotate_on_demand(ctx: Context, name: str, actor: str) -> Outcome:
    """``broker device rotate NAME``: rotate now, whether or not a rotation is due."""
    async with ctx.store.session() as db:
        device = await by_name(db, Device, name)
    if device.state == "retired":
        raise Refused(f"device {name!r} is retired: it has no credential left to rotate")
    return await _claimed(ctx, device, actor, on_demand=True)


async def rotate_due(ctx: Context, device_id: int, actor: str = "broker") -> Outcome | None:
    """The background rotation of one due device; None if another node holds it."""
    async with ctx.store.session() as db:
        device = await db.get(Device, device_id)
    if device is None:
        return None
    try:
        return await _claimed(ctx, device, actor, on_demand=False)
    except Conflict:
        return None


async def _claimed(ctx: Context, device: Device, actor: str, on_demand: bool) -> Outcome:
    assert device.id is not None
    if not await rotations.claim(ctx, device.id, on_demand=on_demand):
        async with ctx.store.session() as db:
            fresh = await db.get(Device, device.id)
        holder = fresh.rotation_claimed_by if fresh else None
        raise Conflict(f"a rotation of device {device.name!r} is already under way"
                       f"{f' on {holder}' if holder else ''}; try again later")
    try:
        return await _rotate(ctx, device.id, actor)
    except (DeviceError, Refused, StoreError) as exc:
        if on_demand:
            raise
        return await _record_failure(ctx, device.id, actor, _StepFailed("prepare", str(exc)))
    finally:
        await rotations.release(ctx, device.id)


async def _rotate(ctx: Context, device_id: int, actor: str) -> Outcome:
    plan = await _plan(ctx, device_id)
    if plan is None:
        return await _nothing_to_rotate(ctx, device_id)
    try:
        recovered = await _settle(ctx, plan)
        if recovered is not None:
            return recovered
        return await _run(ctx, plan, actor)
    except _StepFailed as failure:
        if plan.touched:
            await _settle_quietly(ctx, device_id)
        elif plan.pending_id is not None:  # the device never saw it
            await _drop_pending(ctx, device_id, plan.pending_id)
        return await _record_failure(ctx, device_id, actor, failure)


async def _plan(ctx: Context, device_id: int) -> _Plan | None:
    async with ctx.store.session() as db:
        device = await db.get(Device, device_id)
        if device is None:
            raise NotFound(f"no device with id {device_id}")
        creds = await rotations.credentials_of(db, device_id)
    current = [c for c in creds if c.current]
    if not current:
        return None
    try:
        method = method_for(current[-1].kind, device.rotate_method)
    except RotationError as exc:
        raise Refused(f"device {device.name!r}: {exc}") from None
    return _Plan(device, current[-1], method, await device_login(ctx, device_id))


async def _nothing_to_rotate(ctx: Context, device_id: int) -> Outcome:
    async with ctx.store.session() as db:
        device = await db.get(Device, device_id)
        assert device is not None
        retired = device.state == "retired"
        if device.rotation_due_at is not None:
            device.rotation_due_at, device.rotation_reason = None, None
            db.add(device)
    if retired:
        return Outcome(device.name, True, f"device {device.name} is retired and its secrets"
                       " are already deleted", secrets_deleted=True)
    return Outcome(device.name, False, f"device {device.name!r} has no credential in the vault"
                   " to rotate")


async def _run(ctx: Context, plan: _Plan, actor: str) -> Outcome:
    kind = plan.current.kind
    new_secret, new_public = _new_secret(kind, plan.device.name)
    pending_id = plan.pending_id = await _vault_pending(ctx, plan, new_secret)
    if plan.method is RotationMethod.AUTHORIZED_KEY:
        fingerprint: str | None = await _rotate_key(ctx, plan, new_secret, new_public)
    else:
        await _rotate_password(ctx, plan, new_secret)
        fingerprint = None
    return await _promote(ctx, plan.device.id or 0, pending_id, actor, plan.method.value,
                          fingerprint)


def _new_secret(kind: str, device: str) -> tuple[bytes, str]:
    if kind == "password":
        return secrets.token_urlsafe(24).encode(), ""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"vendor-access-broker@{device}")
    return key.export_private_key(), key.export_public_key().decode().strip()


async def _vault_pending(ctx: Context, plan: _Plan, secret: bytes) -> int:
    """The new secret, sealed, not current: kept whatever happens on the device next."""
    async with ctx.store.session() as db:
        row = DeviceCredential(device_id=plan.device.id or 0, kind=plan.current.kind,
                               secret=ctx.vault.seal(secret), owner=plan.current.owner,
                               created_at=ctx.now(), current=False)
        db.add(row)
        await db.flush()
        assert row.id is not None
        return row.id


async def _step(step: str, work: Awaitable[T]) -> T:
    try:
        return await work
    except DeviceError as exc:
        raise _StepFailed(step, exc.full) from None


async def _rotate_password(ctx: Context, plan: _Plan, new: bytes) -> None:
    conn = await _step("login", connect_device(ctx, plan.device.id or 0))
    try:
        plan.touched = True
        if plan.method is RotationMethod.CHPASSWD:
            await _step("change", device_ops.chpasswd(conn, plan.login.user, new.decode()))
        else:
            await _step("change", device_ops.passwd(conn, plan.login.secret.decode(),
                                                    new.decode()))
    finally:
        conn.close()
    verified = await _step("verify", device_ops.fresh_login(ctx, await _login(ctx, plan),
                                                            "password", new))
    verified.close()


async def _rotate_key(ctx: Context, plan: _Plan, new: bytes, new_public: str) -> str:
    old_blob = key_blob(asyncssh.import_private_key(plan.login.secret).export_public_key()
                        .decode())
    conn = await _step("login", connect_device(ctx, plan.device.id or 0))
    try:
        text = await _step("read keys", device_ops.read_authorized_keys(conn))
        plan.touched = True
        await _step("add key", device_ops.write_authorized_keys(conn, _added(text, new_public)))
    finally:
        conn.close()
    login = await _login(ctx, plan)
    fresh = await _step("verify", device_ops.fresh_login(ctx, login, "key", new))
    try:
        text = await _step("read keys", device_ops.read_authorized_keys(fresh))
        if old_blob is not None and old_blob != key_blob(new_public):
            await _step("remove old key", device_ops.write_authorized_keys(
                fresh, _without(text, [old_blob])))
    finally:
        fresh.close()
    again = await _step("verify again", device_ops.fresh_login(ctx, login, "key", new))
    again.close()
    return str(asyncssh.import_public_key(new_public).get_fingerprint())


async def _login(ctx: Context, plan: _Plan) -> DeviceLogin:
    """The login details again: the host key may have been pinned by the first login."""
    return await device_login(ctx, plan.device.id or 0)


async def _promote(ctx: Context, device_id: int, pending_id: int, actor: str, method: str,
                   fingerprint: str | None, recovered: bool = False) -> Outcome:
    """The new secret works on the device: make it the only one in the vault."""
    now = ctx.now()
    async with ctx.store.session() as db:
        device = await db.get(Device, device_id)
        pending = await db.get(DeviceCredential, pending_id)
        assert device is not None and pending is not None
        await db.exec(delete(DeviceCredential).where(
            col(DeviceCredential.device_id) == device_id,
            col(DeviceCredential.id) != pending_id))
        pending.current = True
        db.add(pending)
        reason = device.rotation_reason
        rotations.succeeded(device, now)
        db.add(device)
        data: dict[str, object] = {"method": method, "reason": reason}
        if fingerprint:
            data["fingerprint"] = fingerprint
        if recovered:
            data["recovered"] = True
        await ctx.audit(db, "device.rotated", actor, device.name, **data)
        purged = device.state == "retired"
        if purged:
            await rotations.delete_secrets(ctx, db, device, actor,
                                           "device retired; final rotation done")
    log.info("device credential rotated", device=device.name, method=method)
    detail = f"device {device.name}: credential rotated ({method}"
    detail += f", new key {fingerprint})" if fingerprint else ")"
    if purged:
        detail += "; the device is retired, its secrets are deleted from the vault"
    return Outcome(device.name, True, detail, method, fingerprint, secrets_deleted=purged)


async def _record_failure(ctx: Context, device_id: int, actor: str,
                          failure: _StepFailed) -> Outcome:
    now = ctx.now()
    async with ctx.store.session() as db:
        device = await db.get(Device, device_id)
        assert device is not None
        retry_at = rotations.failed(device, now)
        db.add(device)
        await ctx.audit(db, "device.rotation_failed", actor, device.name, step=failure.step,
                        error=failure.error, attempts=device.rotation_attempts,
                        retry_at=retry_at.isoformat(), method=device.rotate_method)
    log.warning("device credential rotation failed", device=device.name, step=failure.step,
                error=failure.error, retry_at=retry_at.isoformat())
    return Outcome(device.name, False, f"device {device.name}: rotation failed at"
                   f" {failure.step}: {failure.error}; the old credential stays in use;"
                   f" retry at {retry_at:%Y-%m-%d %H:%M:%SZ}", retry_at=retry_at)


async def _settle(ctx: Context, plan: _Plan) -> Outcome | None:
    """A pending secret left by an interrupted or failed rotation: keep whichever secret
    works on the device. If the device already took the pending one, it is promoted and
    that completes the rotation (the Outcome); otherwise None."""
    async with ctx.store.session() as db:
        creds = await rotations.credentials_of(db, plan.device.id or 0)
    pending = [c for c in creds if not c.current]
    if not pending:
        return None
    login = await _login(ctx, plan)
    if await device_ops.works(ctx, login, plan.current.kind, plan.login.secret):
        await _discard(ctx, plan, pending)
        return None
    for row in reversed(pending):
        secret = ctx.vault.open(row.secret)
        if await device_ops.works(ctx, login, row.kind, secret):
            return await _promote(ctx, plan.device.id or 0, row.id or 0, "broker",
                                  plan.method.value, _fingerprint(row.kind, secret),
                                  recovered=True)
    raise _StepFailed("login", f"neither the vaulted nor the pending secret logs in to"
                      f" device {plan.device.name}; both are kept")


def _fingerprint(kind: str, secret: bytes) -> str | None:
    return None if kind != "key" else str(asyncssh.import_private_key(secret).get_fingerprint())


async def _discard(ctx: Context, plan: _Plan, pending: list[DeviceCredential]) -> None:
    """Drop pending secrets the device did not take (and, for keys, their lines)."""
    if plan.method is RotationMethod.AUTHORIZED_KEY:
        blobs = [key_blob(asyncssh.import_private_key(ctx.vault.open(p.secret))
                          .export_public_key().decode()) for p in pending]
        conn = await _step("login", connect_device(ctx, plan.device.id or 0))
        try:
            text = await _step("read keys", device_ops.read_authorized_keys(conn))
            cleaned = _without(text, [b for b in blobs if b])
            if cleaned != text:
                await _step("remove stale key", device_ops.write_authorized_keys(conn, cleaned))
        finally:
            conn.close()
    for row in pending:
        await _drop_pending(ctx, plan.device.id or 0, row.id or 0)


async def _drop_pending(ctx: Context, device_id: int, credential_id: int) -> None:
    async with ctx.store.session() as db:
        await db.exec(delete(DeviceCredential).where(
            col(DeviceCredential.device_id) == device_id, col(DeviceCredential.id) == credential_id,
            col(DeviceCredential.current).is_(False)))


async def _settle_quietly(ctx: Context, device_id: int) -> None:
    """After a failure: settle what can be settled now; the retry settles the rest."""
    try:
        plan = await _plan(ctx, device_id)
        if plan is not None:
            await _settle(ctx, plan)
    except (_StepFailed, DeviceError) as exc:
        log.warning("rotation left a pending secret to settle later", device_id=device_id,
                    error=str(exc))


async def retire_device(ctx: Context, name: str, actor: str) -> tuple[Device, Outcome | None]:
    """``broker device retire``: revoke every grant and refuse all access from now on. A
    ``rotate`` device then gets its final rotation, whose success deletes its secrets from
    the vault (a failure is retried by ``broker serve`` with back-off until it works); any
    other device's secrets are deleted at once (see ``rotations.device_retired``)."""
    from broker.services.directory import Directory  # directory -> grants -> rotations

    device = await Directory(ctx, actor).set_device_state(name, "retired")
    assert device.id is not None
    if device.rotation_due_at is None:
        return device, None
    await rotations.wait_for_sessions_to_end(ctx, device.id)
    outcome = await rotate_due(ctx, device.id, actor)
    if outcome is None:  # `broker serve` claimed it first: say how it went there
        outcome = await _outcome_elsewhere(ctx, device.id, name)
    return device, outcome


async def _outcome_elsewhere(ctx: Context, device_id: int, name: str) -> Outcome | None:
    """What the final rotation another node ran came to, once it is over (None while it
    still runs, after a minute)."""
    done = await rotations.wait_for_other_node(ctx, device_id)
    if done is None:
        return None
    if done.rotation_due_at is None:
        async with ctx.store.reading() as db:
            left = await rotations.credentials_of(db, device_id)
        return Outcome(name, True, f"device {name}: final credential rotated by another node",
                       secrets_deleted=not left)
    return Outcome(name, False, f"device {name}: the final rotation failed on another node"
                   f" ({done.rotation_reason or 'see the audit log'}); retry at"
                   f" {done.rotation_due_at:%Y-%m-%d %H:%M:%SZ}",
                   retry_at=done.rotation_due_at)
