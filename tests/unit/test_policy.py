"""Policy evaluation, approvals, access hours, request checks and explanations."""

from __future__ import annotations

import itertools
from datetime import time, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.domain.policy import (
    DEFAULT_POLICY,
    ApprovalRule,
    DeviceFacts,
    HoursWindow,
    Policy,
    Rules,
    TechnicianFacts,
    approvals_satisfied,
    check_request,
    evaluate,
    missing_approvals,
    within_hours,
)
from broker.domain.protocols import ALL_PROTOCOLS, Protocol
from broker.policy.explain import explain, explain_json

MON, TUE, WED, SUN = 0, 1, 2, 6


def rules(**changes: object) -> Rules:
    base: dict[str, object] = {
        "max_duration": timedelta(hours=4),
        "protocols": frozenset({Protocol.SSH, Protocol.SFTP}),
        "forward_ports": frozenset(),
        "approvals": (ApprovalRule(1),),
        "hours": None,
        "require_totp": False,
        "breakglass_max": None,
        "pending_expiry": timedelta(hours=24),
    }
    base.update(changes)
    return Rules(**base)  # type: ignore[arg-type]


def policy(
    name: str,
    vendors: set[str] | None = None,
    names: set[str] | None = None,
    tags: set[str] | None = None,
    **rule_changes: object,
) -> Policy:
    return Policy(
        name=name,
        source=f"{name}.yaml",
        line=3,
        vendors=None if vendors is None else frozenset(vendors),
        device_names=frozenset(names or ()),
        device_tags=frozenset(tags or ()),
        rules=rules(**rule_changes),
    )


def device(name: str = "ct-2", tags: set[str] | None = None, state: str = "active") -> DeviceFacts:
    return DeviceFacts(name, frozenset({"imaging"} if tags is None else tags), "radiology", state)


SIEMENS = TechnicianFacts("anna", "Siemens Healthineers")
BAXTER = TechnicianFacts("bob", "Baxter")


# --- evaluate --------------------------------------------------------------------------------


def test_first_matching_policy_applies_in_the_given_order() -> None:
    narrow = policy("narrow", vendors={"Siemens Healthineers"}, tags={"imaging"})
    broad = policy("broad")
    assert evaluate([narrow, broad], SIEMENS, device()).policy == narrow
    assert evaluate([broad, narrow], SIEMENS, device()).policy == broad


def test_non_matching_policies_are_skipped_until_one_matches() -> None:
    pumps = policy("pumps", tags={"infusion"})
    imaging = policy("imaging", tags={"imaging"})
    decision = evaluate([pumps, imaging], SIEMENS, device())
    assert decision.allowed
    assert decision.policy == imaging
    assert "pumps" in decision.reasons[0] and "does not match" in decision.reasons[0]
    assert "imaging" in decision.reasons[1] and "matches" in decision.reasons[1]
    assert decision.reasons[-1] == "allowed under policy imaging"


def test_policies_after_the_match_are_not_considered() -> None:
    decision = evaluate([policy("first"), policy("second")], SIEMENS, device())
    assert not any("second" in reason for reason in decision.reasons)


@pytest.mark.parametrize(
    "vendor", ["siemens healthineers", "SIEMENS HEALTHINEERS", " Siemens Healthineers "]
)
def test_vendor_match_ignores_case(vendor: str) -> None:
    only = policy("siemens", vendors={"Siemens Healthineers"})
    decision = evaluate([only], TechnicianFacts("anna", vendor), device())
    assert decision.allowed and decision.policy == only


def test_vendor_mismatch_is_refused_with_the_vendor_named() -> None:
    decision = evaluate([policy("siemens", vendors={"Siemens Healthineers"})], BAXTER, device())
    assert not decision.allowed and decision.policy is None
    assert "vendor 'Baxter' is not one of Siemens Healthineers" in decision.reasons[0]


def test_device_name_matches_without_tags() -> None:
    by_name = policy("by-name", names={"ct-2"})
    assert evaluate([by_name], SIEMENS, device("ct-2", tags=set())).policy == by_name
    assert not evaluate([by_name], SIEMENS, device("ct-3")).allowed


def test_device_tag_matches_any_of_the_device_tags() -> None:
    by_tag = policy("by-tag", tags={"lab", "imaging"})
    assert evaluate([by_tag], SIEMENS, device("mr-1", tags={"imaging", "mri"})).allowed
    refused = evaluate([by_tag], SIEMENS, device("pump-1", tags={"infusion"}))
    assert not refused.allowed
    assert "device 'pump-1' (tags: infusion) is not among tags imaging, lab" in refused.reasons[0]


def test_name_or_tag_either_is_enough() -> None:
    both = policy("both", names={"cobas-1"}, tags={"lab"})
    assert evaluate([both], SIEMENS, device("cobas-1", tags=set())).allowed
    assert evaluate([both], SIEMENS, device("other", tags={"lab"})).allowed
    assert not evaluate([both], SIEMENS, device("other", tags={"imaging"})).allowed


def test_policy_without_vendors_or_devices_matches_everything() -> None:
    anything = policy("anything")
    decision = evaluate([anything], BAXTER, device("x", tags=set()))
    assert decision.allowed and decision.policy == anything
    assert "any vendor, any device" in decision.reasons[0]


def test_fail_closed_when_policies_exist_but_none_matches() -> None:
    policies = [policy("a", vendors={"GE HealthCare"}), policy("b", tags={"infusion"})]
    decision = evaluate(policies, SIEMENS, device())
    assert not decision.allowed and decision.policy is None
    assert len(decision.reasons) == 3
    assert decision.reasons[0].startswith("policy a (a.yaml:3) does not match")
    assert decision.reasons[1].startswith("policy b (b.yaml:3) does not match")
    assert decision.reasons[2].startswith("refused: no policy matches technician 'anna'")


def test_default_applies_only_when_there_are_no_policies() -> None:
    decision = evaluate([], BAXTER, device())
    assert decision.allowed and decision.policy is DEFAULT_POLICY
    assert "default" in decision.reasons[0]


def test_default_policy_is_the_contract_default() -> None:
    r = DEFAULT_POLICY.rules
    assert DEFAULT_POLICY.vendors is None
    assert not DEFAULT_POLICY.device_names and not DEFAULT_POLICY.device_tags
    assert r.max_duration == timedelta(hours=8)
    assert r.protocols == ALL_PROTOCOLS
    assert r.approvals == (ApprovalRule(1, ()),)
    assert r.hours is None and not r.require_totp
    assert r.forward_ports == frozenset()
    assert r.breakglass_max == timedelta(hours=1)
    assert r.pending_expiry == timedelta(hours=24)
    assert (DEFAULT_POLICY.name, DEFAULT_POLICY.source, DEFAULT_POLICY.line) == (
        "default",
        "(built-in default)",
        0,
    )


@pytest.mark.parametrize("state", ["retired", "maintenance"])
@pytest.mark.parametrize("policies", [[], [policy("anything")]])
def test_inactive_device_is_refused_with_its_state(state: str, policies: list[Policy]) -> None:
    decision = evaluate(policies, SIEMENS, device(state=state))
    assert not decision.allowed and decision.policy is None
    assert decision.reasons == (f"refused: device 'ct-2' is {state}, not active",)


# --- approvals -------------------------------------------------------------------------------


def approval_rules(*approvals: ApprovalRule) -> Rules:
    return rules(approvals=approvals)


def groups(*names: str) -> frozenset[str]:
    return frozenset(names)


def test_one_approver_counts_once_per_rule() -> None:
    two_biomed = approval_rules(ApprovalRule(2, ("biomed",)))
    assert not approvals_satisfied(two_biomed, {"carol": groups("biomed")})
    assert missing_approvals(two_biomed, {"carol": groups("biomed")}) == (
        "1 more approval from group biomed",
    )
    assert approvals_satisfied(two_biomed, {"carol": groups("biomed"), "dan": groups("biomed")})


def test_one_approver_may_satisfy_several_rules() -> None:
    both = approval_rules(ApprovalRule(1, ("radiology",)), ApprovalRule(1, ("biomed",)))
    assert approvals_satisfied(both, {"erin": groups("radiology", "biomed")})
    assert missing_approvals(both, {"erin": groups("radiology")}) == (
        "1 more approval from group biomed",
    )


def test_approvers_outside_the_groups_do_not_count() -> None:
    radiology = approval_rules(ApprovalRule(1, ("radiology",)))
    assert not approvals_satisfied(radiology, {"frank": groups("nursing-informatics")})
    assert not approvals_satisfied(radiology, {"gina": groups()})


def test_rule_without_groups_accepts_any_approver() -> None:
    anyone = approval_rules(ApprovalRule(1))
    assert approvals_satisfied(anyone, {"gina": groups()})
    assert not approvals_satisfied(anyone, {})
    assert missing_approvals(anyone, {}) == ("1 more approval from any approver",)


def test_missing_approvals_names_every_unmet_rule() -> None:
    demanding = approval_rules(
        ApprovalRule(2, ("biomed",)),
        ApprovalRule(3, ("radiology", "security")),
    )
    assert missing_approvals(demanding, {"h": groups("security")}) == (
        "2 more approvals from group biomed",
        "2 more approvals from any of groups radiology, security",
    )


def test_approval_rule_count_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ApprovalRule(0)


GROUPS = st.sampled_from(["biomed", "radiology", "security", "nursing-informatics"])
RULES = st.lists(
    st.builds(
        ApprovalRule,
        count=st.integers(1, 3),
        groups=st.lists(GROUPS, max_size=2, unique=True).map(tuple),
    ),
    min_size=1,
    max_size=3,
).map(lambda found: approval_rules(*found))
APPROVERS = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d", "e"]),
    st.frozensets(GROUPS, max_size=3),
    max_size=5,
)


def brute_force_satisfied(r: Rules, approvers: dict[str, frozenset[str]]) -> bool:
    """Some choice of ``count`` distinct eligible approvers exists for every rule."""
    return all(
        any(
            all(not rule.groups or approvers[name] & set(rule.groups) for name in chosen)
            for chosen in itertools.combinations(sorted(approvers), rule.count)
        )
        for rule in r.approvals
    )


@given(RULES, APPROVERS)
def test_approvals_agree_with_brute_force(r: Rules, approvers: dict[str, frozenset[str]]) -> None:
    assert approvals_satisfied(r, approvers) == brute_force_satisfied(r, approvers)


@given(RULES, APPROVERS, st.text(min_size=1, max_size=3), st.frozensets(GROUPS))
def test_another_approval_never_undoes_satisfaction(
    r: Rules, approvers: dict[str, frozenset[str]], name: str, new_groups: frozenset[str]
) -> None:
    if approvals_satisfied(r, approvers) and name not in approvers:
        assert approvals_satisfied(r, {**approvers, name: new_groups})


@given(RULES, APPROVERS, GROUPS)
def test_more_group_memberships_never_undo_satisfaction(
    r: Rules, approvers: dict[str, frozenset[str]], extra: str
) -> None:
    if approvals_satisfied(r, approvers):
        assert approvals_satisfied(r, {n: g | {extra} for n, g in approvers.items()})


@given(RULES, APPROVERS)
def test_fewer_approvers_than_the_largest_count_never_suffice(
    r: Rules, approvers: dict[str, frozenset[str]]
) -> None:
    if len(approvers) < max(rule.count for rule in r.approvals):
        assert not approvals_satisfied(r, approvers)


@given(RULES, APPROVERS)
def test_missing_is_empty_exactly_when_satisfied(
    r: Rules, approvers: dict[str, frozenset[str]]
) -> None:
    assert (missing_approvals(r, approvers) == ()) == approvals_satisfied(r, approvers)


# --- hours -----------------------------------------------------------------------------------

OFFICE = HoursWindow(frozenset(range(5)), time(7), time(19), "Europe/Berlin")
NIGHT = HoursWindow(frozenset({MON}), time(22), time(6), "America/New_York")


def test_no_window_means_always() -> None:
    assert within_hours(None, SUN, time(3, 0))


@pytest.mark.parametrize(
    ("weekday", "moment", "inside"),
    [
        (MON, time(7, 0), True),
        (WED, time(12, 30), True),
        (MON, time(18, 59), True),
        (MON, time(19, 0), False),
        (MON, time(6, 59), False),
        (SUN, time(12, 0), False),
    ],
)
def test_day_window(weekday: int, moment: time, inside: bool) -> None:
    assert within_hours(OFFICE, weekday, moment) is inside


@pytest.mark.parametrize(
    ("weekday", "moment", "inside"),
    [
        (MON, time(22, 0), True),
        (MON, time(23, 59), True),
        (TUE, time(2, 0), True),
        (TUE, time(5, 59), True),
        (TUE, time(6, 0), False),
        (MON, time(2, 0), False),
        (TUE, time(23, 0), False),
        (MON, time(12, 0), False),
    ],
)
def test_overnight_window_belongs_to_the_day_it_starts(
    weekday: int, moment: time, inside: bool
) -> None:
    assert within_hours(NIGHT, weekday, moment) is inside


def test_overnight_window_wraps_from_sunday_to_monday() -> None:
    sunday_night = HoursWindow(frozenset({SUN}), time(22), time(4), "UTC")
    assert within_hours(sunday_night, MON, time(3, 0))
    assert not within_hours(sunday_night, SUN, time(3, 0))


def test_equal_start_and_end_is_a_full_day_from_start() -> None:
    day = HoursWindow(frozenset({MON}), time(8), time(8), "UTC")
    assert within_hours(day, MON, time(8)) and within_hours(day, TUE, time(7, 59))
    assert not within_hours(day, MON, time(7, 59)) and not within_hours(day, TUE, time(8))


@given(st.integers(0, 6), st.times(), st.times(), st.times())
def test_every_day_window_is_its_clock_range(weekday: int, start: time, end: time, t: time) -> None:
    window = HoursWindow(frozenset(range(7)), start, end, "UTC")
    overnight = t >= start or t < end
    expected = start <= t < end if start < end else overnight
    assert within_hours(window, weekday, t) is expected


# --- check_request ---------------------------------------------------------------------------


def test_request_within_rules_has_no_violations() -> None:
    assert check_request(rules(), timedelta(hours=4), frozenset({Protocol.SSH})) == ()


def test_request_over_max_duration() -> None:
    assert check_request(rules(), timedelta(hours=5), frozenset({Protocol.SSH})) == (
        "duration 5h exceeds the maximum of 4h",
    )


def test_request_for_no_time_is_refused() -> None:
    assert check_request(rules(), timedelta(0), frozenset({Protocol.SSH})) == (
        "the duration must be longer than zero",
    )


def test_request_with_disallowed_protocols_names_them() -> None:
    wanted = frozenset({Protocol.SSH, Protocol.WEB, Protocol.FORWARD})
    assert check_request(rules(), timedelta(hours=5), wanted) == (
        "duration 5h exceeds the maximum of 4h",
        "protocols forward, web not allowed (allowed: sftp,ssh)",
    )


def test_request_with_one_disallowed_protocol() -> None:
    violations = check_request(rules(), timedelta(hours=1), frozenset({Protocol.SCP}))
    assert violations == ("protocol scp not allowed (allowed: sftp,ssh)",)


# --- explain ---------------------------------------------------------------------------------


def siemens_policy() -> Policy:
    return policy(
        "siemens-imaging",
        vendors={"Siemens Healthineers"},
        tags={"imaging"},
        protocols=frozenset({Protocol.SSH, Protocol.FORWARD}),
        forward_ports=frozenset({443, 104}),
        approvals=(ApprovalRule(1, ("radiology",)), ApprovalRule(2, ("biomed",))),
        hours=OFFICE,
        require_totp=True,
        breakglass_max=timedelta(hours=1),
    )


def test_explain_names_the_policy_and_every_rule() -> None:
    text = explain([siemens_policy()], SIEMENS, device())
    for expected in [
        "Policy siemens-imaging (siemens-imaging.yaml:3) applies.",
        "Maximum duration: 4h",
        "Protocols: forward, ssh",
        "Port forwarding: to device ports 104, 443",
        "Approvals needed: 1 approval from group radiology and 2 approvals from group biomed",
        "Hours: Mon-Fri 07:00-19:00 (Europe/Berlin)",
        "TOTP code: required",
        "Break-glass: allowed for up to 1h",
        "Pending requests expire after 1d",
    ]:
        assert expected in text


def test_explain_describes_overnight_hours_and_defaults() -> None:
    text = explain([policy("nights", hours=NIGHT)], SIEMENS, device())
    assert "Hours: Mon 22:00-06:00 (overnight, ending the next day) (America/New_York)" in text
    assert "TOTP code: not required" in text
    assert "Break-glass: not allowed" in text
    assert "Port forwarding: no ports" in text


def test_explain_refusal_gives_the_reasons() -> None:
    text = explain([siemens_policy()], BAXTER, device())
    assert "vendor 'Baxter' is not one of Siemens Healthineers" in text
    assert "refused: no policy matches" in text
    assert "applies" not in text


def test_explain_json() -> None:
    data = explain_json([siemens_policy()], SIEMENS, device())
    assert data["allowed"] is True
    assert data["policy"]["name"] == "siemens-imaging"
    assert data["policy"]["source"] == "siemens-imaging.yaml" and data["policy"]["line"] == 3
    assert data["policy"]["rules"] == {
        "max_duration": "4h",
        "protocols": ["forward", "ssh"],
        "forward_ports": [104, 443],
        "approvals": [
            {"count": 1, "groups": ["radiology"]},
            {"count": 2, "groups": ["biomed"]},
        ],
        "hours": {
            "days": ["mon", "tue", "wed", "thu", "fri"],
            "from": "07:00",
            "to": "19:00",
            "timezone": "Europe/Berlin",
        },
        "require_totp": True,
        "breakglass_max": "1h",
        "pending_expiry": "1d",
        "supervision": "none",
        "commands": [],
        "files": {"upload": "allow", "download": "allow", "max_size": None,
                  "deny_names": [], "paths": []},
    }
    refused = explain_json([siemens_policy()], BAXTER, device(state="retired"))
    assert refused["allowed"] is False and refused["policy"] is None
    assert refused["reasons"] == ["refused: device 'ct-2' is retired, not active"]
