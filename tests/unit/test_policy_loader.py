"""Loading policies/*.yaml: the shipped examples, the format, and every kind of bad input."""

from __future__ import annotations

import tempfile
from datetime import time, timedelta
from pathlib import Path
from textwrap import dedent

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.domain.policy import (
    DEFAULT_POLICY,
    ApprovalRule,
    DeviceFacts,
    HoursWindow,
    TechnicianFacts,
    evaluate,
)
from broker.domain.protocols import ALL_PROTOCOLS, Protocol
from broker.policy import PolicyError, PolicyProblem, check_policies, load_policies

SHIPPED = Path(__file__).resolve().parents[2] / "policies"


def write(directory: Path, name: str, text: str) -> str:
    path = directory / name
    path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    return str(path)


def test_shipped_policies_have_no_problems() -> None:
    assert sorted(p.name for p in SHIPPED.glob("*.yaml")), "no example policies shipped"
    assert check_policies(SHIPPED) == []


def test_shipped_policies_load_in_file_order() -> None:
    policies = load_policies(SHIPPED)
    sources = [Path(p.source).name for p in policies]
    assert sources == sorted(sources)
    assert len(policies) >= 2 and len({p.name for p in policies}) == len(policies)
    assert all(p.line > 0 for p in policies)


def test_shipped_policies_are_realistic() -> None:
    policies = load_policies(SHIPPED)
    pump = DeviceFacts("alaris-pc-unit-7", frozenset({"infusion"}), "icu", "active")
    decision = evaluate(policies, TechnicianFacts("bob", "baxter"), pump)
    assert decision.allowed and decision.policy is not None
    assert Protocol.SSH not in decision.policy.rules.protocols
    assert not evaluate(policies, TechnicianFacts("eve", "Unknown Corp"), pump).allowed


FULL_EXAMPLE = """
policies:
  - name: siemens-imaging
    description: Siemens service engineers on CT and MR scanners
    vendors: ["Siemens Healthineers"]      # omit for any vendor
    devices: {tags: [imaging], names: [ct-scanner-2]}   # omit for any device
    max_duration: 4h
    protocols: [ssh, sftp, scp, forward]
    forward_ports: [443, 104]
    approvals:
      - {count: 1, groups: [radiology]}
      - {count: 2, groups: [biomed, security]}
    hours: {days: [mon, tue, wed, thu, fri], from: "07:00", to: "19:00", timezone: Europe/Berlin}
    require_totp: true
    breakglass_max: 1h
    pending_expiry: 12h
"""


def test_every_field_of_the_format(tmp_path: Path) -> None:
    source = write(tmp_path, "imaging.yaml", FULL_EXAMPLE)
    [p] = load_policies(tmp_path)
    assert (p.name, p.source, p.line) == ("siemens-imaging", source, 2)
    assert p.description == "Siemens service engineers on CT and MR scanners"
    assert p.vendors == frozenset({"Siemens Healthineers"})
    assert p.device_tags == frozenset({"imaging"})
    assert p.device_names == frozenset({"ct-scanner-2"})
    r = p.rules
    assert r.max_duration == timedelta(hours=4)
    assert r.protocols == {Protocol.SSH, Protocol.SFTP, Protocol.SCP, Protocol.FORWARD}
    assert r.forward_ports == frozenset({443, 104})
    assert r.approvals == (ApprovalRule(1, ("radiology",)), ApprovalRule(2, ("biomed", "security")))
    assert r.hours == HoursWindow(frozenset(range(5)), time(7), time(19), "Europe/Berlin")
    assert r.require_totp is True
    assert r.breakglass_max == timedelta(hours=1)
    assert r.pending_expiry == timedelta(hours=12)


def test_files_are_parsed_again_only_when_they_change(tmp_path: Path) -> None:
    path = Path(write(tmp_path, "a.yaml", "policies:\n  - name: first\n"))
    [first] = load_policies(tmp_path)
    [again] = load_policies(tmp_path)
    assert again is first  # unchanged files: the policies parsed last time
    path.write_text("policies:\n  - name: secnd\n", encoding="utf-8")  # same size
    assert [p.name for p in load_policies(tmp_path)] == ["secnd"]
    write(tmp_path, "b.yaml", "policies:\n  - name: added\n")
    assert [p.name for p in load_policies(tmp_path)] == ["secnd", "added"]
    path.unlink()
    assert [p.name for p in load_policies(tmp_path)] == ["added"]


def test_a_file_broken_after_loading_is_refused_on_the_next_load(tmp_path: Path) -> None:
    path = Path(write(tmp_path, "a.yaml", "policies:\n  - name: fine\n"))
    assert load_policies(tmp_path)
    path.write_text("policies:\n  - name: fine\n    bogus: 1\n", encoding="utf-8")
    with pytest.raises(PolicyError) as raised:
        load_policies(tmp_path)
    assert "bogus" in str(raised.value.problems[0])
    with pytest.raises(PolicyError):  # and stays refused, from the cache too
        load_policies(tmp_path)


def test_defaults_of_a_minimal_policy(tmp_path: Path) -> None:
    write(tmp_path, "any.yml", "policies:\n  - name: anyone\n")
    [p] = load_policies(tmp_path)
    assert p.vendors is None and not p.device_names and not p.device_tags
    r = p.rules
    assert r.max_duration == timedelta(hours=8)
    assert r.protocols == ALL_PROTOCOLS
    assert r.forward_ports == frozenset()
    assert r.approvals == (ApprovalRule(1, ()),)
    assert r.hours is None and r.require_totp is False and r.breakglass_max is None
    assert r.pending_expiry == timedelta(hours=24)


def test_hours_without_days_means_every_day(tmp_path: Path) -> None:
    write(
        tmp_path,
        "night.yaml",
        """
        policies:
          - name: nights
            hours: {from: "22:00", to: "06:00", timezone: UTC}
        """,
    )
    [p] = load_policies(tmp_path)
    assert p.rules.hours == HoursWindow(frozenset(range(7)), time(22), time(6), "UTC")


def test_files_load_sorted_by_name_and_others_are_ignored(tmp_path: Path) -> None:
    write(tmp_path, "b.yaml", "policies:\n  - name: from-b\n")
    write(tmp_path, "a.yml", "policies:\n  - name: from-a1\n  - name: from-a2\n")
    write(tmp_path, "notes.txt", "not a policy")
    write(tmp_path, ".#a.yaml", "policies: [")
    assert [p.name for p in load_policies(tmp_path)] == ["from-a1", "from-a2", "from-b"]
    assert [p.line for p in load_policies(tmp_path)] == [2, 3, 2]


def test_empty_directory_means_the_default_applies(tmp_path: Path) -> None:
    assert check_policies(tmp_path) == []
    policies = load_policies(tmp_path)
    assert policies == []
    assert (
        evaluate(
            policies, TechnicianFacts("t", "v"), DeviceFacts("d", frozenset(), None, "active")
        ).policy
        is DEFAULT_POLICY
    )


def test_missing_directory_is_one_clear_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    assert check_policies(missing) == [
        PolicyProblem(str(missing), 0, "", "policy directory does not exist")
    ]
    assert str(check_policies(missing)[0]) == f"{missing}: policy directory does not exist"


def test_load_raises_policy_error_with_every_problem(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        "bad.yaml",
        "policies:\n  - name: x\n    max_duration: 5 hours\n    protocol: [ssh]\n",
    )
    with pytest.raises(PolicyError) as caught:
        load_policies(tmp_path)
    assert [(p.file, p.line, p.field) for p in caught.value.problems] == [
        (source, 3, "policies[0].max_duration"),
        (source, 4, "policies[0].protocol"),
    ]
    assert str(caught.value).splitlines() == [str(p) for p in caught.value.problems]
    assert isinstance(caught.value, Exception)


def test_problem_str_format() -> None:
    assert (
        str(PolicyProblem("p.yaml", 7, "policies[0].name", "bad"))
        == "p.yaml:7: policies[0].name: bad"
    )
    assert (
        str(PolicyProblem("p.yaml", 3, "", "YAML syntax error: x"))
        == "p.yaml:3: YAML syntax error: x"
    )


# Each case: file text, then the expected line, field and a fragment of the message.
BAD_INPUTS = {
    "yaml syntax": ("policies: [\n  - name: x\n", 2, "", "YAML syntax error"),
    "tab indentation": ("policies:\n\t- name: x\n", 2, "", "YAML syntax error"),
    "not a mapping": (
        "- name: x\n",
        1,
        "",
        "expected a mapping with a 'policies:' list, got a list",
    ),
    "empty file": ("", 1, "", "the file is empty"),
    "missing policies": ("{}\n", 1, "policies", "required field is missing"),
    "policies not a list": ("policies: {name: x}\n", 1, "policies", "expected a list of policies"),
    "empty policies": ("policies: []\n", 1, "policies", "empty list"),
    "unknown top-level key": (
        "policies:\n  - name: x\nversion: 2\n",
        3,
        "version",
        "unknown field 'version'",
    ),
    "unknown policy key": (
        "policies:\n  - name: x\n    max_durration: 2h\n",
        3,
        "policies[0].max_durration",
        "unknown field 'max_durration' (did you mean 'max_duration'?)",
    ),
    "missing name": (
        "policies:\n  - max_duration: 2h\n",
        2,
        "policies[0].name",
        "required field is missing",
    ),
    "policy not a mapping": ("policies:\n  - x\n", 2, "policies[0]", "expected a mapping, got 'x'"),
    "bad duration": (
        "policies:\n  - name: x\n    max_duration: 4 hours\n",
        3,
        "policies[0].max_duration",
        "'4 hours' is not a duration",
    ),
    "zero duration": (
        "policies:\n  - name: x\n    pending_expiry: 0m\n",
        3,
        "policies[0].pending_expiry",
        "must be longer than zero",
    ),
    "bad breakglass": (
        "policies:\n  - name: x\n    breakglass_max: 90\n",
        3,
        "policies[0].breakglass_max",
        "90 is not a duration",
    ),
    "unknown protocol": (
        "policies:\n  - name: x\n    protocols:\n      - ssh\n      - telnet\n",
        5,
        "policies[0].protocols[1]",
        "unknown protocol 'telnet'",
    ),
    "no protocols": (
        "policies:\n  - name: x\n    protocols: []\n",
        3,
        "policies[0].protocols",
        "empty list",
    ),
    "port too high": (
        "policies:\n  - name: x\n    forward_ports: [443, 65536]\n",
        3,
        "policies[0].forward_ports[1]",
        "port 65536 is out of range 1..65535",
    ),
    "port zero": (
        "policies:\n  - name: x\n    forward_ports:\n      - 0\n",
        4,
        "policies[0].forward_ports[0]",
        "port 0 is out of range",
    ),
    "port as text": (
        "policies:\n  - name: x\n    forward_ports: ['22']\n",
        3,
        "policies[0].forward_ports[0]",
        "expected a whole number, got '22'",
    ),
    "ports without forward": (
        "policies:\n  - name: x\n    protocols: [ssh]\n    forward_ports: [22]\n",
        4,
        "policies[0].forward_ports",
        "'forward' is not in protocols",
    ),
    "approval count zero": (
        "policies:\n  - name: x\n    approvals:\n      - {count: 0, groups: [biomed]}\n",
        4,
        "policies[0].approvals[0].count",
        "count must be at least 1, not 0",
    ),
    "approval count missing": (
        "policies:\n  - name: x\n    approvals:\n      - groups: [biomed]\n",
        4,
        "policies[0].approvals[0].count",
        "required field is missing",
    ),
    "no approvals": (
        "policies:\n  - name: x\n    approvals: []\n",
        3,
        "policies[0].approvals",
        "empty list",
    ),
    "empty vendors": (
        "policies:\n  - name: x\n    vendors: []\n",
        3,
        "policies[0].vendors",
        "omit vendors",
    ),
    "empty devices": (
        "policies:\n  - name: x\n    devices: {tags: []}\n",
        3,
        "policies[0].devices",
        "omit devices",
    ),
    "unknown day": (
        "policies:\n  - name: x\n    hours:\n      days: [mon, funday]\n"
        "      from: '07:00'\n      to: '19:00'\n      timezone: UTC\n",
        4,
        "policies[0].hours.days[1]",
        "unknown day 'funday'",
    ),
    "empty days": (
        "policies:\n  - name: x\n    hours:\n      days: []\n"
        "      from: '07:00'\n      to: '19:00'\n      timezone: UTC\n",
        4,
        "policies[0].hours.days",
        "empty list: name at least one day, or omit days for every day",
    ),
    "empty file paths": (
        "policies:\n  - name: x\n    files:\n      paths: []\n",
        4,
        "policies[0].files.paths",
        "empty list: name at least one path, or omit paths to allow any",
    ),
    "bad time": (
        "policies:\n  - name: x\n    hours:\n      from: '25:00'\n"
        "      to: '19:00'\n      timezone: UTC\n",
        4,
        "policies[0].hours.from",
        "'25:00' is not a time of day",
    ),
    "unquoted time": (
        "policies:\n  - name: x\n    hours:\n      from: '07:00'\n"
        "      to: 19:30\n      timezone: UTC\n",
        5,
        "policies[0].hours.to",
        'write the time in quotes, like "19:30"',
    ),
    "unknown timezone": (
        "policies:\n  - name: x\n    hours:\n      from: '07:00'\n      to: '19:00'\n"
        "      timezone: Mars/Olympus_Mons\n",
        6,
        "policies[0].hours.timezone",
        "unknown timezone 'Mars/Olympus_Mons'",
    ),
    "missing timezone": (
        "policies:\n  - name: x\n    hours:\n      from: '07:00'\n      to: '19:00'\n",
        3,
        "policies[0].hours.timezone",
        "required field is missing",
    ),
    "totp not a bool": (
        "policies:\n  - name: x\n    require_totp: 'yes'\n",
        3,
        "policies[0].require_totp",
        "expected true or false",
    ),
    "duplicate key": (
        "policies:\n  - name: x\n    max_duration: 2h\n    max_duration: 9h\n",
        4,
        "policies[0].max_duration",
        "duplicate key (first given on line 3)",
    ),
    "duplicate name in file": (
        "policies:\n  - name: x\n  - name: y\n  - name: x\n",
        4,
        "policies[2].name",
        "duplicate policy name 'x': already defined at",
    ),
    "python tag": ("policies: !!python/object/apply:os.system [ls]\n", 1, "", "YAML syntax error"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_reported_with_file_line_and_field(tmp_path: Path, case: str) -> None:
    text, line, field, fragment = BAD_INPUTS[case]
    source = write(tmp_path, "bad.yaml", text)
    problems = check_policies(tmp_path)
    assert len(problems) == 1, problems
    [problem] = problems
    assert (problem.file, problem.line, problem.field) == (source, line, field)
    assert fragment in problem.message
    prefix = f"{source}:{line}: {field}: " if field else f"{source}:{line}: "
    assert str(problem).startswith(prefix)
    with pytest.raises(PolicyError):
        load_policies(tmp_path)


def test_not_utf8_is_reported(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"policies:\n  - name: caf\xe9\n")
    assert [str(p) for p in check_policies(tmp_path)] == [
        f"{tmp_path / 'latin1.yaml'}: not UTF-8 text"
    ]


def test_duplicate_names_across_files_point_at_both(tmp_path: Path) -> None:
    first = write(tmp_path, "a.yaml", "policies:\n  - name: pumps\n")
    second = write(tmp_path, "b.yaml", "policies:\n  - name: other\n  - name: pumps\n")
    assert [str(p) for p in check_policies(tmp_path)] == [
        f"{second}:3: policies[1].name: duplicate policy name 'pumps': already defined at {first}:2"
    ]


def test_a_file_with_several_errors_reports_all_of_them(tmp_path: Path) -> None:
    source = write(
        tmp_path,
        "many.yaml",
        """
        policies:
          - name: first
            vendors: [Baxter]
            max_duration: forever
            protocols: [ssh, rdp]
            forward_ports: [99999]
            approvals:
              - {count: 0}
            hours:
              days: [someday]
              from: "7"
              to: "19:00"
              timezone: Nowhere/City
            colour: blue
          - name: second
            pending_expiry: 1y
        """,
    )
    other = write(tmp_path, "other.yaml", "policies:\n  - name: ok\n    breakglass_max: 2 hours\n")
    found = [(p.file, p.line, p.field) for p in check_policies(tmp_path)]
    assert found == [
        (source, 4, "policies[0].max_duration"),
        (source, 5, "policies[0].protocols[1]"),
        (source, 6, "policies[0].forward_ports[0]"),
        (source, 8, "policies[0].approvals[0].count"),
        (source, 10, "policies[0].hours.days[0]"),
        (source, 11, "policies[0].hours.from"),
        (source, 13, "policies[0].hours.timezone"),
        (source, 14, "policies[0].colour"),
        (source, 16, "policies[1].pending_expiry"),
        (other, 3, "policies[0].breakglass_max"),
    ]


def test_valid_policies_in_a_broken_set_are_still_not_loaded(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "policies:\n  - name: good\n")
    write(tmp_path, "b.yaml", "policies:\n  - name: bad\n    max_duration: x\n")
    with pytest.raises(PolicyError):
        load_policies(tmp_path)


YAML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["policies", "name", "hours", "from", "approvals", "count", "x"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.text(max_size=60), YAML_VALUES.map(yaml.safe_dump)))
def test_arbitrary_files_give_problems_never_exceptions(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / "fuzz.yaml").write_text(text, encoding="utf-8")
        for problem in check_policies(Path(directory)):
            assert problem.file.endswith("fuzz.yaml") and problem.message
