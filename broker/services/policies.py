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
from broker.domain.session_rules import NO_SESSION_RULES, SessionRules
from broker.errors import Refused
from broker.policy.explain import describe_hours
from broker.services.context import Context
from broker.services.lookup import by_name
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


async def facts_of(ctx: Context, tech_name: str, device_name: str
                   ) -> tuple[TechnicianFacts, DeviceFacts]:
    """What policies match on, for a technician and a device named by the caller."""
    async with ctx.store.reading() as db:
        technician = await by_name(db, Technician, tech_name)
        device = await by_name(db, Device, device_name)
    return facts(technician, device)


def session_rules(policies: list[Policy], tech: Technician, device: Device) -> SessionRules:
    """The command rules and supervision of the policy that applies now (none when no policy
    applies any more: the grant itself is what lets the session in)."""
    decision = decide(policies, tech, device)
    if decision.allowed and decision.policy is not None:
        return decision.policy.rules.session
    return NO_SESSION_RULES
