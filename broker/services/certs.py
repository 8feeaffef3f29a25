"""Issuing short-lived OpenSSH user certificates for grants, and the authorized-keys entry the
SSH server uses to accept them.

A certificate is valid from (the later of now and the grant's start) minus a one-minute
allowance for clock skew, until the grant's end, never beyond. Its only principal is
``grant-<id>``; its key id names grant and technician. At login the SSH server accepts the
broker CA only for the principals of the technician's live grants on the device named in the
user name, and :func:`certificate_refusal` checks the presented certificate itself against
the database (serial issued for that grant, same key, same technician and device, grant
neither ended nor revoked). The server re-checks the grant by timer, so a revoked grant's
certificate opens nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncssh
from asyncssh.packet import PacketDecodeError, SSHPacket
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from broker.credentials.certs import (
    certificate_key_id,
    issue_certificate,
    principal_grant,
)
from broker.credentials.keys import load_ssh_key
from broker.domain.grants import GrantState, Window, state_at
from broker.domain.protocols import Protocol
from broker.errors import Refused, UsageError
from broker.services.context import Context
from broker.services.directory import parse_public_keys
from broker.services.lookup import by_id
from broker.store.models import Device, Grant, IssuedCertificate, Technician

CLOCK_SKEW = timedelta(seconds=60)
_SERIAL_BITS = 63


def user_ca_authorized_keys_line(ca_public_key: str, *principals: str) -> str:
    """``cert-authority,principals="P1,P2" <CA key>``: accept certificates from the broker's
    user CA for these principals only (the SSH server sets it per connection)."""
    if not principals:
        raise ValueError("a certificate authority line needs at least one principal")
    for principal in principals:
        if not principal or any(c in principal for c in '",\\') or any(
                c.isspace() for c in principal):
            raise ValueError(f"{principal!r} cannot be a certificate principal")
    lines = [line.strip() for line in ca_public_key.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    if len(lines) != 1:
        raise ValueError("the user CA public key must be exactly one OpenSSH key line")
    return f'cert-authority,principals="{",".join(principals)}" {lines[0]}'


def user_ca_key(ctx: Context) -> asyncssh.SSHKey:
    return load_ssh_key(ctx.config.path(ctx.config.settings.ssh.user_ca), "the user CA key")


def _whole_second(moment: datetime) -> datetime:
    """Truncate to a whole second: certificates carry seconds, and truncating ``valid_before``
    keeps it at or before the grant's end."""
    return moment.replace(microsecond=0)


def parse_user_key(text: str, source: str) -> asyncssh.SSHKey:
    if "PRIVATE KEY-----" in text:
        raise UsageError(f"{source}: is a private key; give the public key (the .pub file)")
    keys = parse_public_keys(text, source)
    if len(keys) != 1:
        raise UsageError(f"{source}: holds {len(keys)} public keys; a certificate signs one")
    return keys[0]


class Certificates:
    def __init__(self, ctx: Context, actor: str) -> None:
        self.ctx, self.actor = ctx, actor

    async def issue(self, grant_id: int, public_key_text: str, source: str = "--key"
                    ) -> tuple[IssuedCertificate, str]:
        """Sign the one public key in ``public_key_text`` (read from ``source``, which error
        messages name) for grant ``grant_id``; return the stored row and the certificate in
        OpenSSH format (one line)."""
        user_key = parse_user_key(public_key_text, source)
        ca_key = user_ca_key(self.ctx)
        now = self.ctx.now()
        async with self.ctx.store.session() as db:
            grant = await by_id(db, Grant, grant_id)
            tech = await db.get(Technician, grant.technician_id)
            device = await db.get(Device, grant.device_id)
            assert tech is not None and device is not None and grant.id is not None
            state = state_at(Window(grant.start, grant.end), now,
                             grant.state == GrantState.REVOKED.value)
            if state not in (GrantState.SCHEDULED, GrantState.ACTIVE):
                raise Refused(f"grant {grant_id} is {state}: no certificate is issued for it")
            if tech.disabled:
                raise Refused(f"technician {tech.name!r} is disabled: no certificate is issued")
            if device.state == "retired":
                raise Refused(f"device {device.name!r} is retired: no certificate is issued")
            valid_after = _whole_second(max(now, grant.start) - CLOCK_SKEW)
            valid_before = _whole_second(grant.end)
            serial = await self._new_serial(db)
            cert = issue_certificate(
                ca_key, user_key, technician=tech.name, grant_id=grant.id, serial=serial,
                valid_after=valid_after, valid_before=valid_before,
                allow_forwarding=Protocol.FORWARD.value in grant.protocols)
            assert tech.id is not None
            row = IssuedCertificate(
                serial=serial, grant_id=grant.id, technician_id=tech.id,
                key_fingerprint=user_key.get_fingerprint(),
                key_id=certificate_key_id(grant.id, tech.name), valid_after=valid_after,
                valid_before=valid_before, issued_at=now, issued_by=self.actor)
            db.add(row)
            await db.flush()
            await self.ctx.audit(db, "certificate.issued", self.actor, f"grant:{grant.id}",
                                 serial=serial, technician=tech.name, device=device.name,
                                 key_id=row.key_id, key_fingerprint=row.key_fingerprint,
                                 valid_after=valid_after.isoformat(),
                                 valid_before=valid_before.isoformat(),
                                 port_forwarding=Protocol.FORWARD.value in grant.protocols)
        return row, cert.export_certificate().decode().strip()

    @staticmethod
    async def _new_serial(db: AsyncSession) -> int:
        """A random, non-zero 63-bit serial no certificate has yet."""
        while True:
            serial = secrets.randbits(_SERIAL_BITS)
            if serial == 0:
                continue
            taken = (await db.exec(select(IssuedCertificate.id).where(
                IssuedCertificate.serial == serial))).first()
            if taken is None:
                return serial


@dataclass(frozen=True)
class PresentedCertificate:
    """What a client's certificate says (decoded by the SSH server; signature not yet checked
    against the CA: asyncssh does that too, and this check only narrows what it accepts)."""

    principals: tuple[str, ...]
    key_id: str
    serial: int
    fingerprint: str

    @classmethod
    def decode(cls, key_data: bytes) -> PresentedCertificate | None:
        """The certificate in ``key_data`` (an SSH public key blob), or None if it is a plain
        key. A certificate that does not decode raises ValueError."""
        try:
            algorithm = SSHPacket(key_data).get_string()
        except (PacketDecodeError, ValueError):
            return None
        if not algorithm.endswith(b"-cert-v01@openssh.com"):
            return None
        try:
            cert = asyncssh.public_key.decode_ssh_certificate(key_data)
        except asyncssh.KeyImportError as exc:
            raise ValueError(f"undecodable certificate: {exc}") from None
        return cls(tuple(getattr(cert, "principals", ())), str(getattr(cert, "_key_id", "")),
                   int(getattr(cert, "_serial", 0)), cert.key.get_fingerprint())


async def certificate_refusal(ctx: Context, cert: PresentedCertificate, technician: str,
                              device: str | None) -> str | None:
    """Why ``cert`` must not open ``TECH+DEVICE`` now, or None if it may (the CA signature,
    validity and principal are asyncssh's to check as well)."""
    if device is None:
        return "a certificate opens only TECH+DEVICE of its grant, not the menu"
    principals = list(cert.principals)
    grant_id = principal_grant(principals[0]) if len(principals) == 1 else None
    if grant_id is None:
        return f"certificate principals {principals!r} do not name one grant"
    if cert.key_id != certificate_key_id(grant_id, technician):
        return f"certificate key id {cert.key_id!r} is not grant {grant_id} of {technician}"
    now = ctx.now()
    async with ctx.store.session() as db:
        issued = (await db.exec(select(IssuedCertificate).where(
            IssuedCertificate.serial == cert.serial))).first()
        grant = await db.get(Grant, grant_id)
        if issued is None or issued.grant_id != grant_id or grant is None:
            return f"certificate serial {cert.serial} was not issued for grant {grant_id}"
        if issued.key_fingerprint != cert.fingerprint:
            return f"certificate serial {cert.serial} was issued for another key"
        tech = await db.get(Technician, grant.technician_id)
        dev = await db.get(Device, grant.device_id)
        if tech is None or tech.name != technician or issued.technician_id != tech.id:
            return f"certificate for grant {grant_id} belongs to another technician"
        if dev is None or dev.name != device:
            return (f"certificate for grant {grant_id} opens "
                    f"{dev.name if dev else 'no device'}, not {device}")
        state = state_at(Window(grant.start, grant.end), now,
                         grant.state == GrantState.REVOKED.value or grant.revoked_at is not None)
        if state in (GrantState.REVOKED, GrantState.EXPIRED):
            return f"certificate for grant {grant_id}: the grant is {state}"
        if now >= issued.valid_before:
            return f"certificate for grant {grant_id} has expired"
    return None
