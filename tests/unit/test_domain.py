"""Pure domain rules: request and grant state machines, windows, access decisions, durations,
protocols and SSH user names."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.durations import DurationError, format_duration, parse_duration
from broker.domain.errors import InvalidTransition, InvariantViolation
from broker.domain.grants import (
    FINAL_GRANT_STATES,
    AccessDecision,
    GrantEvent,
    GrantState,
    GrantView,
    Refusal,
    Window,
    check_device_grantable,
    decide_access,
    next_grant_state,
    state_at,
)
from broker.domain.protocols import ALL_PROTOCOLS, Protocol, ProtocolError, parse_protocols
from broker.domain.requests import (
    TERMINAL_REQUEST_STATES,
    RequestEvent,
    RequestState,
    check_decider,
    check_requested_duration,
    next_request_state,
    pending_deadline,
    window_for,
)
from broker.domain.usernames import Target, UsernameError, check_name, parse_username

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
H = timedelta(hours=1)

# The contract's state machines, written out independently of the code under test.
REQUEST_EDGES = {
    (RequestState.PENDING, RequestEvent.APPROVE): RequestState.APPROVED,
    (RequestState.PENDING, RequestEvent.DENY): RequestState.DENIED,
    (RequestState.PENDING, RequestEvent.EXPIRE): RequestState.EXPIRED,
    (RequestState.PENDING, RequestEvent.CANCEL): RequestState.CANCELLED,
}
GRANT_EDGES = {
    (GrantState.SCHEDULED, GrantEvent.ACTIVATE): GrantState.ACTIVE,
    (GrantState.SCHEDULED, GrantEvent.EXPIRE): GrantState.EXPIRED,
    (GrantState.SCHEDULED, GrantEvent.REVOKE): GrantState.REVOKED,
    (GrantState.ACTIVE, GrantEvent.EXPIRE): GrantState.EXPIRED,
    (GrantState.ACTIVE, GrantEvent.REVOKE): GrantState.REVOKED,
}
FORBIDDEN_REQUEST = [pair for pair in itertools.product(RequestState, RequestEvent)
                     if pair not in REQUEST_EDGES]
FORBIDDEN_GRANT = [pair for pair in itertools.product(GrantState, GrantEvent)
                   if pair not in GRANT_EDGES]


# --- requests -------------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "event"), list(REQUEST_EDGES))
def test_request_allowed_transitions(state: RequestState, event: RequestEvent) -> None:
    assert next_request_state(state, event) is REQUEST_EDGES[(state, event)]


@pytest.mark.parametrize(("state", "event"), FORBIDDEN_REQUEST)
def test_request_forbidden_transitions(state: RequestState, event: RequestEvent) -> None:
    with pytest.raises(InvalidTransition) as caught:
        next_request_state(state, event)
    message = str(caught.value)
    assert state.value in message and "\n" not in message


def test_request_forbidden_set_is_complete() -> None:
    # every non-pending state is terminal: 4 states x 4 events refused
    assert len(FORBIDDEN_REQUEST) == 16
    assert {RequestState(s) for s, _ in FORBIDDEN_REQUEST} == set(TERMINAL_REQUEST_STATES)
    assert RequestState.PENDING not in TERMINAL_REQUEST_STATES


def test_request_transition_message_reads_naturally() -> None:
    with pytest.raises(InvalidTransition, match="a request that is approved cannot be cancelled"):
        next_request_state(RequestState.APPROVED, RequestEvent.CANCEL)


@pytest.mark.parametrize(("requester", "approver"), [
    ("alice", "alice"), ("alice", "ALICE"), ("Alice", "aLiCe"), ("STRASSE", "straße"),
])
def test_requester_cannot_decide_own_request(requester: str, approver: str) -> None:
    with pytest.raises(InvariantViolation, match="cannot decide"):
        check_decider(requester, approver)


def test_someone_else_may_decide() -> None:
    check_decider("alice", "bob")
    check_decider("alice", "alice2")


def test_requested_duration_bounds() -> None:
    check_requested_duration(8 * H, 8 * H)
    check_requested_duration(timedelta(seconds=1), 8 * H)
    with pytest.raises(InvariantViolation, match=r"longer than the policy allows \(8h00m\)"):
        check_requested_duration(8 * H + timedelta(minutes=1), 8 * H)
    for bad in (timedelta(0), -H):
        with pytest.raises(InvariantViolation, match="longer than zero"):
            check_requested_duration(bad, 8 * H)


def test_window_opens_at_approval_when_start_is_earlier_or_missing() -> None:
    assert window_for(T0, None, 2 * H) == (T0, T0 + 2 * H)
    assert window_for(T0, T0 - 3 * H, 2 * H) == (T0, T0 + 2 * H)
    assert window_for(T0, T0, 2 * H) == (T0, T0 + 2 * H)


def test_window_opens_at_requested_start_when_later() -> None:
    start = T0 + 5 * H
    assert window_for(T0, start, 2 * H) == (start, start + 2 * H)


@settings(max_examples=60, deadline=None)
@given(approved=st.integers(-10_000, 10_000), requested=st.none() | st.integers(-10_000, 10_000),
       minutes=st.integers(1, 24 * 60))
def test_window_never_loses_waiting_time(approved: int, requested: int | None,
                                         minutes: int) -> None:
    approved_at = T0 + timedelta(minutes=approved)
    requested_at = None if requested is None else T0 + timedelta(minutes=requested)
    start, end = window_for(approved_at, requested_at, timedelta(minutes=minutes))
    assert end - start == timedelta(minutes=minutes)
    assert start >= approved_at
    assert requested_at is None or start >= requested_at
    assert start in (approved_at, requested_at)


def test_pending_deadline() -> None:
    assert pending_deadline(T0, timedelta(hours=24)) == T0 + timedelta(days=1)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(list(RequestEvent)), max_size=8))
def test_request_machine_property(events: list[RequestEvent]) -> None:
    state, path = RequestState.PENDING, [RequestState.PENDING]
    for event in events:
        was_terminal = state in TERMINAL_REQUEST_STATES
        try:
            state = next_request_state(state, event)
        except InvalidTransition:
            assert was_terminal or (state, event) not in REQUEST_EDGES
            continue
        assert not was_terminal, "left a terminal state"
        path.append(state)
    for before, after in itertools.pairwise(path):
        assert after in {to for (frm, _), to in REQUEST_EDGES.items() if frm is before}
    assert len(path) <= 2  # pending, then at most one decision


# --- grants ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("state", "event"), list(GRANT_EDGES))
def test_grant_allowed_transitions(state: GrantState, event: GrantEvent) -> None:
    assert next_grant_state(state, event) is GRANT_EDGES[(state, event)]


@pytest.mark.parametrize(("state", "event"), FORBIDDEN_GRANT)
def test_grant_forbidden_transitions(state: GrantState, event: GrantEvent) -> None:
    with pytest.raises(InvalidTransition, match=f"a grant that is {state.value} cannot"):
        next_grant_state(state, event)


def test_grant_forbidden_set() -> None:
    assert set(FORBIDDEN_GRANT) == {
        (GrantState.ACTIVE, GrantEvent.ACTIVATE),
        *((final, event) for final in FINAL_GRANT_STATES for event in GrantEvent),
    }


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(list(GrantEvent)), max_size=8))
def test_grant_machine_property(events: list[GrantEvent]) -> None:
    state, path = GrantState.SCHEDULED, [GrantState.SCHEDULED]
    for event in events:
        final = state in FINAL_GRANT_STATES
        try:
            state = next_grant_state(state, event)
        except InvalidTransition:
            assert final or (state, event) not in GRANT_EDGES
            continue
        assert not final, "left a final state"
        path.append(state)
    order = [GrantState.SCHEDULED, GrantState.ACTIVE]
    for before, after in itertools.pairwise(path):
        assert (before, after) in {(frm, to) for (frm, _), to in GRANT_EDGES.items()}
        if after in order:
            assert order.index(after) > order.index(before)


def test_window_invariants() -> None:
    Window(T0, T0 + timedelta(seconds=1))
    with pytest.raises(InvariantViolation, match="end after it starts"):
        Window(T0, T0)
    with pytest.raises(InvariantViolation, match="end after it starts"):
        Window(T0, T0 - H)
    naive = datetime(2026, 3, 2, 10, 0)
    with pytest.raises(InvariantViolation, match="timezone-aware"):
        Window(naive, naive + H)
    with pytest.raises(InvariantViolation, match="timezone-aware"):
        Window(T0, naive + 2 * H)


def test_window_compares_across_timezones() -> None:
    plus_two = timezone(timedelta(hours=2))
    # 11:00+02:00 is 09:00Z, before T0 (10:00Z)
    with pytest.raises(InvariantViolation):
        Window(T0, datetime(2026, 3, 2, 11, 0, tzinfo=plus_two))


def test_no_grant_on_retired_device() -> None:
    with pytest.raises(InvariantViolation, match="retired"):
        check_device_grantable("retired")
    check_device_grantable("active")
    check_device_grantable("maintenance")


def test_state_at_boundaries() -> None:
    window = Window(T0, T0 + H)
    assert state_at(window, T0 - timedelta(microseconds=1), False) is GrantState.SCHEDULED
    assert state_at(window, T0, False) is GrantState.ACTIVE  # [start, end)
    assert state_at(window, T0 + H - timedelta(microseconds=1), False) is GrantState.ACTIVE
    assert state_at(window, T0 + H, False) is GrantState.EXPIRED
    for moment in (T0 - H, T0, T0 + 2 * H):
        assert state_at(window, moment, True) is GrantState.REVOKED


@settings(max_examples=80, deadline=None)
@given(start=st.integers(-1000, 1000), length=st.integers(1, 1000),
       moments=st.lists(st.integers(-3000, 3000), min_size=1, max_size=20))
def test_state_at_is_monotone_for_unrevoked_grant(start: int, length: int,
                                                  moments: list[int]) -> None:
    window = Window(T0 + timedelta(seconds=start), T0 + timedelta(seconds=start + length))
    order = [GrantState.SCHEDULED, GrantState.ACTIVE, GrantState.EXPIRED]
    states = [state_at(window, T0 + timedelta(seconds=m), False) for m in sorted(moments)]
    ranks = [order.index(s) for s in states]
    assert ranks == sorted(ranks)


# --- access decisions -----------------------------------------------------------------------

def grant(ident: int, start: timedelta, end: timedelta,
          protocols: frozenset[Protocol] = ALL_PROTOCOLS, revoked: bool = False) -> GrantView:
    return GrantView(ident, Window(T0 + start, T0 + end), protocols, revoked)


SSH_ONLY = frozenset({Protocol.SSH})
WEB_ONLY = frozenset({Protocol.WEB})


def decide(grants: list[GrantView], protocol: Protocol = Protocol.SSH,
           device_state: str = "active", enabled: bool = True) -> AccessDecision:
    return decide_access(grants, T0, protocol, device_state, enabled)


def test_access_allowed_with_open_grant() -> None:
    decision = decide([grant(7, -H, H, SSH_ONLY)])
    assert decision.allowed and decision.refusal is None
    assert decision.grant is not None and decision.grant.id == 7


@pytest.mark.parametrize(("grants", "protocol", "device_state", "enabled", "refusal", "text"), [
    ([], Protocol.SSH, "active", True, Refusal.NO_GRANT, "no grant"),
    ([grant(1, H, 2 * H)], Protocol.SSH, "active", True, Refusal.NOT_STARTED, "opens at"),
    ([grant(1, -2 * H, -H)], Protocol.SSH, "active", True, Refusal.EXPIRED, "expired at"),
    ([grant(1, -H, H, revoked=True)], Protocol.SSH, "active", True, Refusal.REVOKED, "revoked"),
    ([grant(1, -H, H, WEB_ONLY)], Protocol.SFTP, "active", True, Refusal.PROTOCOL,
     "allows web, not sftp"),
    ([grant(1, -H, H)], Protocol.SSH, "retired", True, Refusal.RETIRED, "retired"),
    ([grant(1, -H, H)], Protocol.SSH, "maintenance", True, Refusal.MAINTENANCE, "maintenance"),
    ([grant(1, -H, H)], Protocol.SSH, "active", False, Refusal.DISABLED, "disabled"),
])
def test_every_refusal(grants: list[GrantView], protocol: Protocol, device_state: str,
                       enabled: bool, refusal: Refusal, text: str) -> None:
    decision = decide(grants, protocol, device_state, enabled)
    assert not decision.allowed
    assert decision.refusal is refusal
    assert decision.grant is None
    assert text in decision.detail and "\n" not in decision.detail


def test_refusal_precedence_disabled_then_retired_then_maintenance() -> None:
    open_grant = [grant(1, -H, H)]
    assert decide(open_grant, device_state="retired", enabled=False).refusal is Refusal.DISABLED
    assert decide([], device_state="retired").refusal is Refusal.RETIRED
    assert decide([], device_state="maintenance").refusal is Refusal.MAINTENANCE


def test_choice_among_open_grants_prefers_the_one_lasting_longest() -> None:
    decision = decide([grant(1, -H, H), grant(2, -2 * H, 3 * H), grant(3, -H, 2 * H)])
    assert decision.grant is not None and decision.grant.id == 2


def test_choice_skips_open_grant_without_the_protocol() -> None:
    decision = decide([grant(1, -H, 5 * H, WEB_ONLY), grant(2, -H, H, SSH_ONLY)])
    assert decision.allowed and decision.grant is not None and decision.grant.id == 2


def test_choice_ignores_revoked_and_expired_when_one_is_open() -> None:
    decision = decide([grant(1, -H, 5 * H, revoked=True), grant(2, -3 * H, -H),
                       grant(3, -H, H)])
    assert decision.grant is not None and decision.grant.id == 3


def test_upcoming_grant_is_named_before_lapsed_ones() -> None:
    decision = decide([grant(1, -3 * H, -H), grant(2, 3 * H, 4 * H), grant(3, H, 2 * H)])
    assert decision.refusal is Refusal.NOT_STARTED and "grant 3 " in decision.detail


def test_most_recent_lapsed_grant_decides_between_revoked_and_expired() -> None:
    expired_last = decide([grant(1, -5 * H, -4 * H, revoked=True), grant(2, -3 * H, -H)])
    assert expired_last.refusal is Refusal.EXPIRED and "grant 2" in expired_last.detail
    revoked_last = decide([grant(1, -5 * H, -4 * H), grant(2, -3 * H, H, revoked=True)])
    assert revoked_last.refusal is Refusal.REVOKED and "grant 2" in revoked_last.detail


def test_grant_that_ended_exactly_now_is_expired() -> None:
    assert decide([grant(1, -H, timedelta(0))]).refusal is Refusal.EXPIRED


# --- durations ------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("45s", timedelta(seconds=45)), ("90m", timedelta(minutes=90)), ("2h", 2 * H),
    ("1d", timedelta(days=1)), (" 2h ", 2 * H), ("1 h", H), ("9999999s", timedelta(
        seconds=9999999)), ("2h30m", timedelta(minutes=150)), ("1.5h", timedelta(minutes=90)),
    ("1d12h", timedelta(hours=36)), ("1h 30m 15s", timedelta(seconds=5415)),
    ("0.5d", timedelta(hours=12)),
])
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", [
    "", " ", "h", "2", "0s", "0d", "-1h", "1w", "2H", "2hours", "10000000s", "30m1h",
    "1h1h", "1.5s", "0.0001h", "1.h", ".5h", "0h0m",
    "\u0661h", "2h\nx", "\x00", "2h;rm",
])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(text)
    message = str(caught.value)
    assert "\n" not in message
    assert any(hint in message for hint in (
        "45s, 90m, 2h", "longer than zero", "largest first", "whole number of seconds"))


def test_parse_duration_rejects_non_text() -> None:
    with pytest.raises(DurationError):
        parse_duration(7200)  # type: ignore[arg-type]


@pytest.mark.parametrize(("delta", "text"), [
    (timedelta(seconds=45), "45s"), (timedelta(seconds=5400), "90m"), (2 * H, "2h"),
    (timedelta(days=1), "1d"), (timedelta(hours=36), "36h"), (timedelta(seconds=61), "61s"),
])
def test_format_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text


@settings(max_examples=150, deadline=None)
@given(value=st.integers(1, 9_999_999), unit=st.sampled_from("smhd"))
def test_duration_roundtrip(value: int, unit: str) -> None:
    delta = parse_duration(f"{value}{unit}")
    text = format_duration(delta)
    assert parse_duration(text) == delta
    assert len(text) <= len(f"{value}{unit}")  # the shortest exact spelling


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 9_999_999))
def test_format_then_parse_is_identity(seconds: int) -> None:
    assert parse_duration(format_duration(timedelta(seconds=seconds))) == timedelta(
        seconds=seconds)


# --- protocols ------------------------------------------------------------------------------

def test_parse_protocols() -> None:
    assert parse_protocols("ssh") == {Protocol.SSH}
    assert parse_protocols(" SSH , Web,ssh,") == {Protocol.SSH, Protocol.WEB}
    assert parse_protocols("ssh,sftp,scp,forward,web") == ALL_PROTOCOLS


@pytest.mark.parametrize(("text", "message"), [
    ("", "no protocol given"), (" , ,", "no protocol given"),
    ("ssh,telnet", "unknown protocol 'telnet'"), ("rdp", "unknown protocol 'rdp'"),
])
def test_parse_protocols_rejects(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_protocols(text)


# --- user names -----------------------------------------------------------------------------

@pytest.mark.parametrize(("username", "target"), [
    ("TECH", Target("TECH", None)),
    ("TECH+DEVICE", Target("TECH", "DEVICE")),
    ("alice.smith+ct-scanner_2", Target("alice.smith", "ct-scanner_2")),
    ("a" * 63 + "+" + "b" * 63, Target("a" * 63, "b" * 63)),
])
def test_parse_username(username: str, target: Target) -> None:
    assert parse_username(username) == target


@pytest.mark.parametrize(("username", "fragment"), [
    ("", "empty user name"),
    ("+", "technician name ''"),
    ("a+", "device name ''"),
    ("+b", "technician name ''"),
    ("a+b+c", "more than one '+'"),
    ("x" * 300, "300 characters"),
    ("tëch+dev", "technician name 't\\xebch'"),
    ("tech+dëv", "device name 'd\\xebv'"),
    ("te ch+dev", "technician name 'te ch'"),
    ("tech+dev ", "device name 'dev '"),
    ("tech\x1b[31m+dev", "technician name 'tech\\x1b[31m'"),
    ("tech+dev\r\nrm -rf", "device name 'dev\\r\\nrm -rf'"),
    ("alice\n", "technician name 'alice\\n'"),
    ("tech\x00", "technician name 'tech\\x00'"),
    ("-tech+dev", "technician name '-tech'"),
    ("tech+" + "d" * 64, "device name"),
    ("a" * 64, "technician name"),
    ("tech+dev\u2028", "device name 'dev\\u2028'"),
])
def test_bad_usernames(username: str, fragment: str) -> None:
    with pytest.raises(UsernameError) as caught:
        parse_username(username)
    message = str(caught.value)
    assert fragment in message
    assert message.isascii() and message.isprintable(), repr(message)  # no raw control chars
    assert "TECH+DEVICE" in message or "letters, digits" in message
    assert len(message) < 200


def test_check_name_returns_the_name_and_refuses_trailing_newline() -> None:
    assert check_name("device", "pump-1") == "pump-1"
    with pytest.raises(UsernameError):
        check_name("device", "pump-1\n")


def test_a_revoked_grant_says_why_with_stored_text_escaped() -> None:
    revoked = GrantView(4, Window(T0 - H, T0 + H), ALL_PROTOCOLS, True,
                        "vendor done\x1b[2J early")
    refused = decide([revoked])
    assert refused.refusal is Refusal.REVOKED
    assert refused.detail == "your grant 4 was revoked: vendor done\\x1b[2J early"
    plain = decide([GrantView(4, Window(T0 - H, T0 + H), ALL_PROTOCOLS, True)])
    assert plain.detail == "your grant 4 was revoked"
