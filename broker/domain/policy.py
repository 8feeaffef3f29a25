"""Access policies: which policy applies to a technician and a device, and what it demands."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import time, timedelta

from broker.domain.durations import format_duration
from broker.domain.file_rules import FileRules
from broker.domain.protocols import ALL_PROTOCOLS, Protocol, format_protocols
from broker.domain.session_rules import NO_SESSION_RULES, SessionRules

ACTIVE = "active"


@dataclass(frozen=True)
class TechnicianFacts:
    name: str
    vendor: str


@dataclass(frozen=True)
class DeviceFacts:
    name: str
    tags: frozenset[str]
    department: str | None
    state: str


@dataclass(frozen=True)
class ApprovalRule:
    """``count`` distinct approvers from any of ``groups``; no groups means any approver."""

    count: int
    groups: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"an approval rule needs a count of at least 1, not {self.count}")

    def accepts(self, groups: frozenset[str]) -> bool:
        return not self.groups or not groups.isdisjoint(self.groups)

    def describe(self, count: int | None = None) -> str:
        """``2 approvals from group biomed``; ``count`` overrides the rule's own count."""
        n = self.count if count is None else count
        noun = "approval" if n == 1 else "approvals"
        if not self.groups:
            return f"{n} {noun} from any approver"
        if len(self.groups) == 1:
            return f"{n} {noun} from group {self.groups[0]}"
        return f"{n} {noun} from any of groups {', '.join(self.groups)}"


@dataclass(frozen=True)
class HoursWindow:
    """Access hours in the IANA ``timezone`` (converted by the caller).

    ``days`` are the days a window *starts* on (0 = Monday .. 6 = Sunday). When ``end`` is not
    after ``start`` the window runs overnight into the next day (22:00-06:00); ``start == end``
    is a full 24 hours from ``start``.
    """

    days: frozenset[int]
    start: time
    end: time
    timezone: str


def within_hours(window: HoursWindow | None, local_weekday: int, local_time: time) -> bool:
    """Whether a moment, given in the window's own timezone, falls inside it (None = always)."""
    if window is None:
        return True
    if window.start < window.end:
        return local_weekday in window.days and window.start <= local_time < window.end
    if local_time >= window.start:
        return local_weekday in window.days
    return local_time < window.end and (local_weekday - 1) % 7 in window.days


@dataclass(frozen=True)
class Rules:
    max_duration: timedelta
    protocols: frozenset[Protocol]
    forward_ports: frozenset[int]
    approvals: tuple[ApprovalRule, ...]
    hours: HoursWindow | None
    require_totp: bool
    breakglass_max: timedelta | None
    pending_expiry: timedelta
    session: SessionRules = NO_SESSION_RULES  # command rules and supervision
    files: FileRules = field(default_factory=FileRules)  # broker/domain/file_rules.py


@dataclass(frozen=True)
class Policy:
    name: str
    source: str
    line: int
    vendors: frozenset[str] | None
    device_names: frozenset[str]
    device_tags: frozenset[str]
    rules: Rules
    description: str = ""

    @property
    def location(self) -> str:
        return f"{self.source}:{self.line}" if self.line > 0 else self.source


# The contract's default when there are no policy files. Port forwarding is an allowed protocol
# but no port is open to it: forwarding needs a policy that names its ports.
DEFAULT_POLICY = Policy(
    name="default",
    source="(built-in default)",
    line=0,
    vendors=None,
    device_names=frozenset(),
    device_tags=frozenset(),
    rules=Rules(
        max_duration=timedelta(hours=8),
        protocols=ALL_PROTOCOLS,
        forward_ports=frozenset(),
        approvals=(ApprovalRule(count=1),),
        hours=None,
        require_totp=False,
        breakglass_max=timedelta(hours=1),
        pending_expiry=timedelta(hours=24),
    ),
    description="No policy files: any technician, any active device, one approval.",
)


def default_policy_notice(directory: str) -> str:
    """One line saying that the permissive built-in default is in force, and what it allows."""
    rules = DEFAULT_POLICY.rules
    hours = int(rules.max_duration.total_seconds() // 3600)
    glass = (f"break-glass up to {int(rules.breakglass_max.total_seconds() // 3600)}h"
             if rules.breakglass_max else "no break-glass")
    return (f"no policy files in {directory}: the permissive built-in default policy is in"
            f" force (any vendor's technician, any active device, up to {hours}h, every"
            f" protocol, one approval from any approver, {glass});"
            " add policies/*.yaml to restrict it")


@dataclass(frozen=True)
class PolicyDecision:
    allowed: bool
    policy: Policy | None
    reasons: tuple[str, ...]


def _listing(values: frozenset[str]) -> str:
    return ", ".join(sorted(values))


def _device_matches(policy: Policy, device: DeviceFacts) -> bool:
    if not policy.device_names and not policy.device_tags:
        return True
    return device.name in policy.device_names or not policy.device_tags.isdisjoint(device.tags)


def _mismatches(policy: Policy, tech: TechnicianFacts, device: DeviceFacts) -> list[str]:
    problems = []
    if policy.vendors is not None:
        wanted = {vendor.strip().casefold() for vendor in policy.vendors}
        if tech.vendor.strip().casefold() not in wanted:
            problems.append(f"vendor {tech.vendor!r} is not one of {_listing(policy.vendors)}")
    if not _device_matches(policy, device):
        wanted_parts = []
        if policy.device_names:
            wanted_parts.append(f"names {_listing(policy.device_names)}")
        if policy.device_tags:
            wanted_parts.append(f"tags {_listing(policy.device_tags)}")
        tags = _listing(device.tags) or "none"
        problems.append(
            f"device {device.name!r} (tags: {tags}) is not among " + " or ".join(wanted_parts)
        )
    return problems


def _match_reason(policy: Policy, tech: TechnicianFacts, device: DeviceFacts) -> str:
    vendor = "any vendor" if policy.vendors is None else f"vendor {tech.vendor!r}"
    if not policy.device_names and not policy.device_tags:
        what = "any device"
    elif device.name in policy.device_names:
        what = f"device name {device.name!r}"
    else:
        what = f"device tag {_listing(policy.device_tags & device.tags)}"
    return f"policy {policy.name} ({policy.location}) matches: {vendor}, {what}"


def evaluate(
    policies: Sequence[Policy], tech: TechnicianFacts, device: DeviceFacts
) -> PolicyDecision:
    """The first matching policy in order, or the default when there are none at all.

    When policies exist and none matches, access is refused: a policy set fails closed.
    """
    if device.state != ACTIVE:
        return PolicyDecision(
            False, None, (f"refused: device {device.name!r} is {device.state}, not active",)
        )
    if not policies:
        return PolicyDecision(
            True,
            DEFAULT_POLICY,
            ("no policy files: the built-in default policy applies", "allowed under default"),
        )
    reasons = []
    for policy in policies:
        problems = _mismatches(policy, tech, device)
        if not problems:
            reasons.append(_match_reason(policy, tech, device))
            reasons.append(f"allowed under policy {policy.name}")
            return PolicyDecision(True, policy, tuple(reasons))
        reasons.append(
            f"policy {policy.name} ({policy.location}) does not match: " + "; ".join(problems)
        )
    reasons.append(
        f"refused: no policy matches technician {tech.name!r} (vendor {tech.vendor!r})"
        f" on device {device.name!r}"
    )
    return PolicyDecision(False, None, tuple(reasons))


def _eligible(rule: ApprovalRule, approver_groups: Mapping[str, frozenset[str]]) -> int:
    return sum(1 for groups in approver_groups.values() if rule.accepts(groups))


def missing_approvals(
    rules: Rules, approver_groups: Mapping[str, frozenset[str]]
) -> tuple[str, ...]:
    """What is still needed, given each approving approver's groups.

    An approver counts at most once per rule but toward every rule whose groups they are in,
    so the rules are independent of one another.
    """
    missing = []
    for rule in rules.approvals:
        short = rule.count - _eligible(rule, approver_groups)
        if short > 0:
            missing.append(rule.describe(short).replace(" approval", " more approval", 1))
    return tuple(missing)


def approvals_satisfied(rules: Rules, approver_groups: Mapping[str, frozenset[str]]) -> bool:
    return not missing_approvals(rules, approver_groups)


def check_request(
    rules: Rules, duration: timedelta, protocols: frozenset[Protocol]
) -> tuple[str, ...]:
    """What a request for ``duration`` and ``protocols`` violates under ``rules``."""
    violations = []
    if duration <= timedelta(0):
        violations.append("the duration must be longer than zero")
    elif duration > rules.max_duration:
        violations.append(
            f"duration {format_duration(duration)} exceeds the maximum of "
            f"{format_duration(rules.max_duration)}"
        )
    refused = protocols - rules.protocols
    if refused:
        allowed = format_protocols(rules.protocols) if rules.protocols else "none"
        noun = "protocol" if len(refused) == 1 else "protocols"
        names = ", ".join(sorted(refused))
        violations.append(f"{noun} {names} not allowed (allowed: {allowed})")
    return tuple(violations)
