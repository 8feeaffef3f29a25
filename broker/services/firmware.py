"""The firmware part of a device's trust record: its probe, what each run of the probe saw,
drift from the accepted baseline, and an admin accepting a change.

Every reading is kept (``firmware_reading``) and written to its session row. A reading that
differs from what the trust record expects is stored as *observed* (the baseline stays) and
audited as ``device.firmware_changed``, which notifies every approver; ``accept`` makes the
observed value the baseline, on purpose and audited.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime

from sqlmodel import col, select

from broker.domain.firmware import Reading, Verdict, check_probe, compare, expected
from broker.domain.text import TextError
from broker.errors import BadText, Conflict, NotFound, Refused
from broker.services.context import Context
from broker.services.lookup import by_name
from broker.services.text import refuse_input
from broker.store.models import Device, FirmwareReading, Session

PHASES = ("before", "after")
HISTORY = 10  # readings `device show` and the device page list


async def valid_probe(ctx: Context, actor: str, device: str, probe: str) -> str:
    """``probe`` as stored, or BadText (``--probe: ...``) after an ``input.refused`` event."""
    try:
        return check_probe(probe)
    except TextError as exc:
        await refuse_input(ctx, actor, device, "probe", str(exc), probe)
        raise BadText(f"--probe: {exc.detail}", "probe") from None


async def set_probe(ctx: Context, actor: str, name: str, probe: str | None) -> Device:
    """Set (or, with None, remove) the device's probe; audited as ``device.probe_set``."""
    if probe is not None:
        probe = await valid_probe(ctx, actor, name, probe)
    async with ctx.store.session() as db:
        device = await by_name(db, Device, name)
        if device.state == "retired":
            raise Refused(f"device {name!r} is retired: its trust record can no longer change")
        previous, device.probe = device.probe, probe
        db.add(device)
        await ctx.audit(db, "device.probe_set", actor, name, probe=probe, previous=previous)
    return device


@dataclass(frozen=True)
class Recorded:
    """What recording one reading did to the trust record."""

    verdict: Verdict
    before: str | None  # what the trust record expected
    after: str | None   # what the probe saw


async def record_reading(ctx: Context, device_id: int, session_id: str, phase: str,
                         reading: Reading, internal: str | None = None) -> Recorded:
    """Keep one probe run: on the session row, in the history, and in the trust record."""
    assert phase in PHASES
    now = ctx.now()
    async with ctx.store.session() as db:
        # locked (PostgreSQL): two sessions on one device may report at the same moment
        device = (await db.exec(select(Device).where(Device.id == device_id)
                                .with_for_update())).first()
        session = await db.get(Session, session_id)
        if device is None:
            return Recorded(Verdict.FAILED, None, None)
        if session is not None:
            setattr(session, f"probe_{phase}", reading.text)
            db.add(session)
        verdict = compare(device.firmware, device.firmware_observed, reading)
        was = expected(device.firmware, device.firmware_observed)
        db.add(FirmwareReading(device_id=device_id, session_id=session_id, phase=phase,
                               value=reading.value, error=reading.error,
                               changed=verdict in (Verdict.CHANGED, Verdict.RESTORED), at=now))
        where = {"session_id": session_id, "phase": phase}
        if verdict is Verdict.FAILED:
            await ctx.audit(db, "device.probe_failed", "broker", device.name, **where,
                            reason=reading.error, **({"internal": internal} if internal else {}))
        elif verdict is Verdict.FIRST:
            device.firmware = reading.value
            await ctx.audit(db, "device.firmware_recorded", "broker", device.name, **where,
                            firmware=reading.value)
        elif verdict is Verdict.CHANGED:
            device.firmware_observed = reading.value
            device.firmware_observed_at, device.firmware_observed_session = now, session_id
            await ctx.audit(db, "device.firmware_changed", "broker", device.name, **where,
                            before=was, after=reading.value, baseline=device.firmware)
        elif verdict is Verdict.RESTORED:
            device.firmware_observed = None
            device.firmware_observed_at = device.firmware_observed_session = None
            await ctx.audit(db, "device.firmware_changed", "broker", device.name, **where,
                            before=was, after=reading.value, baseline=device.firmware,
                            restored=True)
        db.add(device)
    return Recorded(verdict, was, reading.value)


def fingerprint(value: str) -> str:
    """A short stand-in for an observed value (the portal's form carries it back)."""
    return hashlib.sha256(value.encode()).hexdigest()


async def accept(ctx: Context, actor: str, name: str, seen: str | None = None) -> Device:
    """Make the observed firmware the device's baseline (``device.firmware_accepted``).

    ``seen``: the :func:`fingerprint` of what the admin was shown (the portal's form sends
    it); if the device reported something else since, nothing is accepted."""
    async with ctx.store.session() as db:
        device = (await db.exec(select(Device).where(Device.name == name)
                                .with_for_update())).first()
        if device is None:
            raise NotFound(f"no device named {name!r}")
        observed = device.firmware_observed
        if observed is None:
            raise Conflict(f"device {name!r} has no firmware change to accept"
                           f" (baseline: {device.firmware or 'none'})")
        if seen is not None and not hmac.compare_digest(seen, fingerprint(observed)):
            raise Conflict(f"device {name!r} reported another firmware since the page was"
                           " shown; reload it and check again")
        previous, device.firmware = device.firmware, observed
        device.firmware_observed = None
        device.firmware_observed_at = device.firmware_observed_session = None
        db.add(device)
        db.add(FirmwareReading(device_id=device.id or 0, phase="accepted", value=observed,
                               actor=actor[:200], at=ctx.now()))
        await ctx.audit(db, "device.firmware_accepted", actor, name, previous=previous,
                        accepted=observed)
    return device


@dataclass(frozen=True)
class HistoryLine:
    at: datetime
    phase: str
    session: str | None
    text: str  # the output, ``probe failed: ...``, or the accepted value
    changed: bool
    actor: str | None


async def history(ctx: Context, name: str, limit: int = HISTORY) -> list[HistoryLine]:
    """The device's latest firmware readings and acceptances, newest first."""
    async with ctx.store.session() as db:
        device = await by_name(db, Device, name)
        rows = (await db.exec(select(FirmwareReading)
                              .where(FirmwareReading.device_id == device.id)
                              .order_by(col(FirmwareReading.id).desc()).limit(limit))).all()
    return [HistoryLine(r.at, r.phase, r.session_id,
                        r.value if r.value is not None else Reading(error=r.error or "?").text,
                        r.changed, r.actor) for r in rows]
