"""The grant state machine: ``scheduled -> active -> expired | revoked``.

A grant is technician x device x protocols x [start, end). Its state is a function of the
clock and of whether it was revoked, so :func:`state_at` derives it and the stored state is
only a cache that the scheduler keeps in step (and that restarts recompute).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from broker.domain.errors import InvalidTransition, InvariantViolation
from broker.domain.protocols import Protocol
from broker.domain.text import visible


class GrantState(StrEnum):
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    EXPIRED = "expired"
    REVOKED = "revoked"


class GrantEvent(StrEnum):
    ACTIVATE = "activate"
    EXPIRE = "expire"
    REVOKE = "revoke"


_TRANSITIONS: dict[tuple[GrantState, GrantEvent], GrantState] = {
    (GrantState.SCHEDULED, GrantEvent.ACTIVATE): GrantState.ACTIVE,
    (GrantState.SCHEDULED, GrantEvent.EXPIRE): GrantState.EXPIRED,
    (GrantState.SCHEDULED, GrantEvent.REVOKE): GrantState.REVOKED,
    (GrantState.ACTIVE, GrantEvent.EXPIRE): GrantState.EXPIRED,
    (GrantState.ACTIVE, GrantEvent.REVOKE): GrantState.REVOKED,
}

FINAL_GRANT_STATES = frozenset({GrantState.EXPIRED, GrantState.REVOKED})
#: Minutes before a grant's end when live sessions are warned; the first is also when the
#: technician is e-mailed that the window is ending.
WARN_MINUTES_BEFORE_END = (5, 1)


def next_grant_state(state: GrantState, event: GrantEvent) -> GrantState:
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"a grant that is {state} cannot {event.value}") from None


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise InvariantViolation("grant window times must be timezone-aware")
        if self.end <= self.start:
            raise InvariantViolation("a grant must end after it starts")


def check_device_grantable(device_state: str) -> None:
    if device_state == "retired":
        raise InvariantViolation("the device is retired: no grant can be opened on it")


def state_at(window: Window, now: datetime, revoked: bool) -> GrantState:
    if revoked:
        return GrantState.REVOKED
    if now < window.start:
        return GrantState.SCHEDULED
    if now < window.end:
        return GrantState.ACTIVE
    return GrantState.EXPIRED


class Refusal(StrEnum):
    """Why a connection under a grant is refused; each has a sentence for the technician."""

    NO_GRANT = "no grant"
    NOT_STARTED = "not yet started"
    EXPIRED = "expired"
    REVOKED = "revoked"
    PROTOCOL = "protocol not allowed"
    RETIRED = "device retired"
    MAINTENANCE = "device in maintenance"
    DISABLED = "technician disabled"
    ACCOUNT_EXPIRED = "technician account expired"
    VENDOR_DISABLED = "vendor disabled"
    CONTRACT_ENDED = "vendor contract ended"
    UNKNOWN_DEVICE = "unknown device"


@dataclass(frozen=True)
class GrantView:
    """What access checks need to know about one grant."""

    id: int
    window: Window
    protocols: frozenset[Protocol]
    revoked: bool
    revoke_reason: str | None = None  # what the revoker said, shown to the technician


@dataclass(frozen=True)
class AccessDecision:
    grant: GrantView | None
    refusal: Refusal | None
    detail: str

    @property
    def allowed(self) -> bool:
        return self.refusal is None


def decide_access(
    grants: list[GrantView],
    now: datetime,
    protocol: Protocol,
    device_state: str,
    technician_enabled: bool,
) -> AccessDecision:
    """Pick the grant that lets a connection in now, or say the most useful reason why not.

    Among several grants the one open now wins; otherwise the refusal names the grant
    closest to being usable (an upcoming one before a lapsed one).
    """
    if not technician_enabled:
        return AccessDecision(None, Refusal.DISABLED, "your technician account is disabled")
    if device_state == "retired":
        return AccessDecision(None, Refusal.RETIRED, "the device is retired")
    if device_state == "maintenance":
        return AccessDecision(None, Refusal.MAINTENANCE, "the device is in maintenance")
    open_now = [g for g in grants if state_at(g.window, now, g.revoked) is GrantState.ACTIVE]
    usable = [g for g in open_now if protocol in g.protocols]
    if usable:
        best = max(usable, key=lambda g: g.window.end)
        return AccessDecision(best, None, f"grant {best.id} is open until {best.window.end}")
    if open_now:
        allowed = ",".join(sorted(p.value for p in open_now[0].protocols))
        return AccessDecision(
            None, Refusal.PROTOCOL, f"your grant allows {allowed}, not {protocol.value}"
        )
    upcoming = sorted(
        (g for g in grants if state_at(g.window, now, g.revoked) is GrantState.SCHEDULED),
        key=lambda g: g.window.start,
    )
    if upcoming:
        first = upcoming[0]
        return AccessDecision(
            None, Refusal.NOT_STARTED, f"your grant {first.id} opens at {_iso(first.window.start)}"
        )
    lapsed = sorted(grants, key=lambda g: g.window.end, reverse=True)
    if lapsed:
        last = lapsed[0]
        if last.revoked:
            said = f": {visible(last.revoke_reason)}" if last.revoke_reason else ""
            return AccessDecision(None, Refusal.REVOKED, f"your grant {last.id} was revoked{said}")
        return AccessDecision(
            None, Refusal.EXPIRED, f"your grant {last.id} expired at {_iso(last.window.end)}"
        )
    return AccessDecision(None, Refusal.NO_GRANT, "you have no grant for this device")


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
