"""``broker policy explain``: which policy applies to a technician and a device, in plain words."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker.domain.durations import format_duration
from broker.domain.policy import (
    DeviceFacts,
    HoursWindow,
    Policy,
    Rules,
    TechnicianFacts,
    evaluate,
)
from broker.policy.session_spec import describe_session, session_json

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _days(days: frozenset[int]) -> str:
    if days == frozenset(range(7)):
        return "every day"
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    names = [_DAY_NAMES[d].capitalize() for d in range(7)]
    return ", ".join(
        f"{names[run[0]]}-{names[run[-1]]}" if len(run) > 2 else ", ".join(names[d] for d in run)
        for run in runs
    )


def describe_hours(window: HoursWindow | None) -> str:
    if window is None:
        return "any time"
    span = f"{window.start:%H:%M}-{window.end:%H:%M}"
    if window.end <= window.start:
        span += " (overnight, ending the next day)"
    return f"{_days(window.days)} {span} ({window.timezone})"


def describe_rules(rules: Rules) -> list[str]:
    """One plain-language line per rule."""
    ports = ", ".join(str(p) for p in sorted(rules.forward_ports))
    return [
        f"Maximum duration: {format_duration(rules.max_duration)}",
        f"Protocols: {', '.join(sorted(rules.protocols))}",
        f"Port forwarding: to device ports {ports}" if ports else "Port forwarding: no ports",
        "Approvals needed: " + " and ".join(rule.describe() for rule in rules.approvals),
        f"Hours: {describe_hours(rules.hours)}",
        "TOTP code: required" if rules.require_totp else "TOTP code: not required",
        f"Break-glass: allowed for up to {format_duration(rules.breakglass_max)}"
        if rules.breakglass_max
        else "Break-glass: not allowed",
        f"Pending requests expire after {format_duration(rules.pending_expiry)}",
        *describe_session(rules.session),
        rules.files.describe(),
    ]


def explain(policies: Sequence[Policy], tech: TechnicianFacts, device: DeviceFacts) -> str:
    decision = evaluate(policies, tech, device)
    tags = ", ".join(sorted(device.tags)) or "none"
    lines = [
        f"Technician: {tech.name} (vendor {tech.vendor})",
        f"Device: {device.name} (tags: {tags}; department: {device.department or 'none'};"
        f" state: {device.state})",
        "",
        *decision.reasons,
    ]
    if decision.policy is not None:
        policy = decision.policy
        lines += ["", f"Policy {policy.name} ({policy.location}) applies."]
        if policy.description:
            lines.append(policy.description)
        lines += [f"  {line}" for line in describe_rules(policy.rules)]
    return "\n".join(lines)


def rules_json(rules: Rules) -> dict[str, Any]:
    hours = rules.hours
    return {
        "max_duration": format_duration(rules.max_duration),
        "protocols": [p.value for p in sorted(rules.protocols)],
        "forward_ports": sorted(rules.forward_ports),
        "approvals": [{"count": a.count, "groups": list(a.groups)} for a in rules.approvals],
        "hours": None
        if hours is None
        else {
            "days": [_DAY_NAMES[d] for d in sorted(hours.days)],
            "from": f"{hours.start:%H:%M}",
            "to": f"{hours.end:%H:%M}",
            "timezone": hours.timezone,
        },
        "require_totp": rules.require_totp,
        "breakglass_max": format_duration(rules.breakglass_max) if rules.breakglass_max else None,
        "pending_expiry": format_duration(rules.pending_expiry),
        **session_json(rules.session),
        "files": rules.files.as_json(),
    }


def explain_json(
    policies: Sequence[Policy], tech: TechnicianFacts, device: DeviceFacts
) -> dict[str, Any]:
    decision = evaluate(policies, tech, device)
    policy = decision.policy
    return {
        "technician": {"name": tech.name, "vendor": tech.vendor},
        "device": {
            "name": device.name,
            "tags": sorted(device.tags),
            "department": device.department,
            "state": device.state,
        },
        "allowed": decision.allowed,
        "policy": None
        if policy is None
        else {
            "name": policy.name,
            "description": policy.description,
            "source": policy.source,
            "line": policy.line,
            "rules": rules_json(policy.rules),
        },
        "reasons": list(decision.reasons),
    }
