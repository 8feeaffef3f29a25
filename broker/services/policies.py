"""Policy evaluation against the store's technicians and devices."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from broker.domain.policy import (
    DeviceFacts,
    Policy,
    PolicyDecision,
    Rules,
    TechnicianFacts,
    evaluate,
    within_hours,
)
from broker.errors import Refused
from broker.policy.explain import describe_hours
from broker.services.context import Context
from broker.services.lookup import maybe_by_name
from broker.store.models import Device, Technician


def facts(tech: Technician, device: Device) -> tuple[TechnicianFacts, DeviceFacts]:
    return (TechnicianFacts(name=tech.name, vendor=tech.vendor),
            DeviceFacts(name=device.name, tags=frozenset(device.tags),
                        department=device.department, state=device.state))


def decide(policies: list[Policy], tech: Technician, device: Device) -> PolicyDecision:
    tech_facts, device_facts = facts(tech, device)
    return evaluate(policies, tech_facts, device_facts)


def applicable_rules(policies: list[Policy], tech: Technician, device: Device) -> tuple[str, Rules]:
    """The name and rules of the policy that lets ``tech`` ask for ``device``, or Refused."""
    decision = decide(policies, tech, device)
    if not decision.allowed or decision.policy is None:
        raise Refused(f"no policy lets {tech.name} ({tech.vendor}) request {device.name}: "
                      + (decision.reasons[-1] if decision.reasons else "refused"))
    return decision.policy.name, decision.policy.rules


def inside_hours(rules: Rules, moment: datetime) -> bool:
    if rules.hours is None:
        return True
    local = moment.astimezone(ZoneInfo(rules.hours.timezone))
    return within_hours(rules.hours, local.weekday(), local.time())


def hours_text(rules: Rules) -> str:
    return describe_hours(rules.hours)


async def totp_required(ctx: Context, tech_name: str, device_name: str) -> bool:
    """Does the policy for this technician and device demand a TOTP code at login?"""
    async with ctx.store.session() as db:
        tech = await maybe_by_name(db, Technician, tech_name)
        device = await maybe_by_name(db, Device, device_name)
    if tech is None or device is None:
        return False
    decision = decide(ctx.policies(), tech, device)
    return bool(decision.allowed and decision.policy and decision.policy.rules.require_totp)
