"""Technicians, approvers and devices: the people and the things access is about."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.domain.invitations import PENDING
from broker.domain.rotation import RotationError, method_for
from broker.domain.text import DEPARTMENT, FIRMWARE, MODEL, PURPOSE, VENDOR
from broker.domain.usernames import UsernameError, check_name
from broker.domain.vendors import email_in_domains
from broker.errors import Conflict, Refused, UsageError
from broker.services.context import Context
from broker.services.firmware import valid_probe
from broker.services.grants import revoke_all_on_device
from broker.services.lookup import by_name, maybe_by_name
from broker.services.rotations import device_retired
from broker.services.text import address, free_text
from broker.services.vendors import awaiting_approval, vendor_for_technician
from broker.store.models import (
    Approver,
    ApproverGroup,
    Device,
    DeviceCredential,
    Invitation,
    SamePerson,
    Technician,
    TechnicianKey,
)

if TYPE_CHECKING:
    import asyncssh

DEVICE_STATES = ("active", "maintenance", "retired")


def valid_name(kind: str, name: str) -> str:
    try:
        return check_name(kind, name)
    except UsernameError as exc:
        raise UsageError(str(exc)) from None


def parse_public_keys(text: str, source: str) -> list[asyncssh.SSHKey]:
    import asyncssh  # here: most commands that import the directory parse no key

    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append(asyncssh.import_public_key(line.strip()))
        except (asyncssh.KeyImportError, ValueError) as exc:
            raise UsageError(f"{source}:{number}: not an OpenSSH public key ({exc})") from None
    if not keys:
        raise UsageError(f"{source}: holds no public key")
    return keys


@dataclass
class TechnicianView:
    technician: Technician
    keys: list[TechnicianKey]
    # enrolled by invitation, waiting for an admin's approval (disabled until then)
    pending: bool = False

    @property
    def state(self) -> str:
        """enabled, disabled, or pending (approval)."""
        if not self.technician.disabled:
            return "enabled"
        return "pending" if self.pending else "disabled"


class Directory:
    def __init__(self, ctx: Context, actor: str) -> None:
        self.ctx, self.actor = ctx, actor
        self.vendor_created = False  # add_technician registered its vendor on the spot

    # -- technicians -------------------------------------------------------------------
    async def add_technician(self, name: str, vendor: str, keys: Sequence[asyncssh.SSHKey],
                             email: str | None = None, expires_at: datetime | None = None
                             ) -> TechnicianView:
        """Register a technician of ``vendor`` (registered on the spot, with no domains,
        if no vendor has that name: see :func:`vendor_for_technician`)."""
        valid_name("technician", name)
        if not vendor.strip():
            raise UsageError("--vendor must not be empty")
        vendor = await free_text(self.ctx, self.actor, name, VENDOR, vendor)
        if email is not None:
            email = await address(self.ctx, self.actor, name, "email", email)
        async with self.ctx.store.session() as db:
            if await maybe_by_name(db, Technician, name):
                raise Conflict(f"technician {name!r} already exists")
            org, created = await vendor_for_technician(self.ctx, db, self.actor, vendor, name)
            if email is not None and not email_in_domains(email, org.domains):
                raise Refused(f"--email {email}: not in vendor {org.name}'s domains"
                              f" ({', '.join(org.domains)})")
            if org.disabled:
                raise Refused(f"vendor {org.name!r} is disabled: enable it first"
                              f" ('broker vendor enable {org.name}')")
            tech = Technician(name=name, vendor=org.name, vendor_id=org.id, email=email,
                              expires_at=expires_at, created_at=self.ctx.now())
            self.vendor_created = created
            db.add(tech)
            await db.flush()
            assert tech.id is not None
            rows = [TechnicianKey(technician_id=tech.id, public_key=key.export_public_key()
                                  .decode().strip(), fingerprint=key.get_fingerprint(),
                                  comment=key.get_comment())
                    for key in keys]
            db.add_all(rows)
            await self.ctx.audit(db, "technician.added", self.actor, name, vendor=tech.vendor,
                                 keys=[row.fingerprint for row in rows],
                                 expires_at=expires_at.isoformat() if expires_at else None)
        return TechnicianView(tech, rows)

    async def technicians(self) -> list[TechnicianView]:
        async with self.ctx.store.session() as db:
            techs = (await db.exec(select(Technician).order_by(col(Technician.name)))).all()
            keys = (await db.exec(select(TechnicianKey))).all()
            pending = set((await db.exec(select(Invitation.technician_id).where(
                Invitation.state == PENDING))).all())
        return [TechnicianView(t, [k for k in keys if k.technician_id == t.id], t.id in pending)
                for t in techs]

    async def technician(self, name: str) -> TechnicianView:
        async with self.ctx.store.session() as db:
            tech = await by_name(db, Technician, name)
            keys = (await db.exec(select(TechnicianKey)
                                  .where(TechnicianKey.technician_id == tech.id))).all()
            pending = await awaiting_approval(db, tech)
        return TechnicianView(tech, list(keys), pending)

    async def disable_technician(self, name: str) -> Technician:
        async with self.ctx.store.session() as db:
            tech = await by_name(db, Technician, name)
            if tech.disabled:
                raise Conflict(f"technician {name!r} is already disabled")
            tech.disabled = True
            db.add(tech)
            await self.ctx.audit(db, "technician.disabled", self.actor, name)
        return tech

    # -- approvers ---------------------------------------------------------------------
    async def add_approver(self, name: str, email: str, groups: Sequence[str],
                           same_person_as: Sequence[str] = ()) -> Approver:
        """Register an approver; ``same_person_as`` names technicians this person also is
        (they may never decide or review those technicians' access)."""
        valid_name("approver", name)
        email = await address(self.ctx, self.actor, name, "email", email)
        for group in groups:
            valid_name("group", group)
        async with self.ctx.store.session() as db:
            if await maybe_by_name(db, Approver, name):
                raise Conflict(f"approver {name!r} already exists")
            techs = [await by_name(db, Technician, tech) for tech in sorted(set(same_person_as))]
            approver = Approver(name=name, email=email, created_at=self.ctx.now())
            db.add(approver)
            await db.flush()
            assert approver.id is not None
            db.add_all(ApproverGroup(approver_id=approver.id, group=g) for g in sorted(set(groups)))
            await self.ctx.audit(db, "approver.added", self.actor, name, groups=sorted(set(groups)))
            for tech in techs:
                await self._link(db, approver, tech)
        return approver

    async def link_same_person(self, approver_name: str, tech_name: str) -> Approver:
        """Record that approver ``approver_name`` and technician ``tech_name`` are one person."""
        async with self.ctx.store.session() as db:
            approver = await by_name(db, Approver, approver_name)
            tech = await by_name(db, Technician, tech_name)
            if await db.get(SamePerson, (approver.id, tech.id)) is not None:
                raise Conflict(f"approver {approver.name} is already linked to technician"
                               f" {tech.name}")
            await self._link(db, approver, tech)
        return approver

    async def _link(self, db: AsyncSession, approver: Approver, tech: Technician) -> None:
        assert approver.id is not None and tech.id is not None
        db.add(SamePerson(approver_id=approver.id, technician_id=tech.id,
                          created_at=self.ctx.now(), created_by=self.actor[:200]))
        await self.ctx.audit(db, "approver.linked", self.actor, approver.name,
                             technician=tech.name, relation="same-person")

    async def approvers(self) -> list[tuple[Approver, list[str]]]:
        async with self.ctx.store.session() as db:
            approvers = (await db.exec(select(Approver).order_by(col(Approver.name)))).all()
            groups = (await db.exec(select(ApproverGroup))).all()
        return [(a, sorted(g.group for g in groups if g.approver_id == a.id)) for a in approvers]

    async def same_person_links(self) -> dict[str, list[str]]:
        """Approver name -> the technicians linked to it as the same person."""
        async with self.ctx.store.session() as db:
            rows = (await db.exec(select(Approver.name, Technician.name)
                                  .join(SamePerson, col(SamePerson.approver_id) == Approver.id)
                                  .join(Technician,
                                        col(SamePerson.technician_id) == Technician.id))).all()
        links: dict[str, list[str]] = {}
        for approver, tech in rows:
            links.setdefault(approver, []).append(tech)
        return {name: sorted(techs) for name, techs in links.items()}

    # -- devices -----------------------------------------------------------------------
    async def add_device(self, device: Device, credential_kind: str, secret: bytes,
                         owner: str | None = None) -> Device:
        valid_name("device", device.name)
        for tag in device.tags:
            valid_name("tag", tag)
        for kind in (MODEL, FIRMWARE, DEPARTMENT, PURPOSE):
            value = getattr(device, kind.field)
            if value is not None:
                setattr(device, kind.field,
                        await free_text(self.ctx, self.actor, device.name, kind, value) or None)
        if not 1 <= device.port <= 65535:
            raise UsageError(f"--port {device.port} is not a TCP port (1-65535)")
        if device.probe is not None:
            device.probe = await valid_probe(self.ctx, self.actor, device.name, device.probe)
        try:
            device.rotate_method = method_for(credential_kind, device.rotate_method).value
        except RotationError as exc:
            raise UsageError(f"--rotate-method: {exc}") from None
        async with self.ctx.store.session() as db:
            if await maybe_by_name(db, Device, device.name):
                raise Conflict(f"device {device.name!r} already exists")
            device.created_at = self.ctx.now()
            db.add(device)
            try:
                await db.flush()
            except IntegrityError:
                raise Conflict(f"device {device.name!r} already exists") from None
            assert device.id is not None
            db.add(DeviceCredential(device_id=device.id, kind=credential_kind,
                                    secret=self.ctx.vault.seal(secret), owner=owner,
                                    created_at=self.ctx.now()))
            await self.ctx.audit(db, "device.added", self.actor, device.name, host=device.host,
                                 port=device.port, login_user=device.login_user,
                                 credential=credential_kind, rotate=device.rotate,
                                 rotate_method=device.rotate_method,
                                 **({"probe": device.probe} if device.probe else {}))
        return device

    async def devices(self) -> list[Device]:
        async with self.ctx.store.session() as db:
            return list((await db.exec(select(Device).order_by(col(Device.name)))).all())

    async def device(self, name: str) -> Device:
        async with self.ctx.store.session() as db:
            return await by_name(db, Device, name)

    async def set_device_state(self, name: str, state: str) -> Device:
        assert state in DEVICE_STATES
        async with self.ctx.store.session() as db:
            device = await by_name(db, Device, name)
            if device.state == "retired":
                raise Refused(f"device {name!r} is retired: its state can no longer change")
            if device.state == state:
                raise Conflict(f"device {name!r} is already {state}")
            previous, device.state = device.state, state
            db.add(device)
            await self.ctx.audit(db, f"device.{_state_event(state)}", self.actor, name,
                                 previous=previous)
            if state == "retired":
                await revoke_all_on_device(self.ctx, db, device, self.actor,
                                           reason="device retired")
                await device_retired(self.ctx, db, device, self.actor)
        return device


def _state_event(state: str) -> str:
    return {"active": "maintenance_off", "maintenance": "maintenance_on",
            "retired": "retired"}[state]
