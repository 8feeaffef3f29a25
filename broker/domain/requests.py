"""The access-request state machine: ``pending -> approved | denied | expired | cancelled``."""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from broker.domain.errors import InvalidTransition, InvariantViolation


class RequestState(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


class RequestEvent(StrEnum):
    APPROVE = "approve"
    DENY = "deny"
    EXPIRE = "expire"
    CANCEL = "cancel"


_TRANSITIONS: dict[tuple[RequestState, RequestEvent], RequestState] = {
    (RequestState.PENDING, RequestEvent.APPROVE): RequestState.APPROVED,
    (RequestState.PENDING, RequestEvent.DENY): RequestState.DENIED,
    (RequestState.PENDING, RequestEvent.EXPIRE): RequestState.EXPIRED,
    (RequestState.PENDING, RequestEvent.CANCEL): RequestState.CANCELLED,
}

TERMINAL_REQUEST_STATES = frozenset(
    {RequestState.APPROVED, RequestState.DENIED, RequestState.EXPIRED, RequestState.CANCELLED}
)


def next_request_state(state: RequestState, event: RequestEvent) -> RequestState:
    """The state after ``event``; :class:`InvalidTransition` if the machine forbids it."""
    try:
        return _TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"a request that is {state} cannot be {_past(event)}") from None


def _past(event: RequestEvent) -> str:
    return {"approve": "approved", "deny": "denied", "expire": "expired", "cancel": "cancelled"}[
        event.value
    ]


def check_decider(requester: str, approver: str) -> None:
    """Nobody decides their own request."""
    if requester.casefold() == approver.casefold():
        raise InvariantViolation(f"{approver} requested this access and cannot decide on it")


def check_requested_duration(duration: timedelta, maximum: timedelta) -> None:
    if duration <= timedelta(0):
        raise InvariantViolation("the requested duration must be longer than zero")
    if duration > maximum:
        raise InvariantViolation(
            f"the requested duration {_hm(duration)} is longer than the policy allows"
            f" ({_hm(maximum)})"
        )


def window_for(
    approved_at: datetime, requested_start: datetime | None, duration: timedelta
) -> tuple[datetime, datetime]:
    """The grant window: it opens at approval or at the requested start, whichever is later,
    so time spent waiting for approvers is not taken from the technician."""
    start = max(approved_at, requested_start) if requested_start else approved_at
    return start, start + duration


def pending_deadline(created_at: datetime, pending_expiry: timedelta) -> datetime:
    return created_at + pending_expiry


def _hm(delta: timedelta) -> str:
    minutes = int(delta.total_seconds()) // 60
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
