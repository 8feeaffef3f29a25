"""Policy keys ``commands`` and ``supervision``: good and bad files (one line each, with the
file's line), RE2 semantics (first match wins, no catastrophic backtracking), explain."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from broker.domain.policy import DEFAULT_POLICY, DeviceFacts, TechnicianFacts
from broker.domain.session_rules import (
    NO_SESSION_RULES,
    CommandAction,
    CommandRule,
    compile_pattern,
    first_match,
)
from broker.policy.explain import explain, explain_json
from broker.policy.loader import PolicyError, check_policies, load_policies
from tests.conftest import CliResult

GOOD = """\
policies:
  - name: pumps
    devices: {tags: [infusion]}
    supervision: required
    commands:
      - match: '^\\s*rm\\s+-\\w*r'
        action: deny
        message: "recursive deletes are not allowed on clinical devices"
      - match: '(?i)\\breboot\\b|shutdown'
        action: SUPERVISE
        message: "a restart needs a hospital supervisor watching"
      - match: 'cat\\s+/etc/shadow'
        action: alert
        message: "password file read"
  - name: others
"""


def write(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    (tmp_path / name).write_text(text)
    return tmp_path


def problems(tmp_path: Path, text: str) -> list[str]:
    return [str(p) for p in check_policies(write(tmp_path, text))]


def test_a_good_file_loads_its_rules_in_order_with_their_lines(tmp_path: Path) -> None:
    pumps, others = load_policies(write(tmp_path, GOOD))
    session = pumps.rules.session
    assert session.supervision_required and session.guarded
    assert [(r.action, r.line) for r in session.commands] == [
        (CommandAction.DENY, 6), (CommandAction.SUPERVISE, 9), (CommandAction.ALERT, 12)]
    assert session.commands[0].message == "recursive deletes are not allowed on clinical devices"
    assert others.rules.session == NO_SESSION_RULES and not others.rules.session.guarded
    assert DEFAULT_POLICY.rules.session == NO_SESSION_RULES


def test_the_first_matching_rule_wins(tmp_path: Path) -> None:
    (pumps, _) = load_policies(write(tmp_path, GOOD))
    rules = pumps.rules.session.commands
    assert first_match(rules, "  rm -rf /data") is rules[0]
    assert first_match(rules, "sudo REBOOT now") is rules[1]
    assert first_match(rules, "rm -r /tmp; reboot") is rules[0]  # both match: the first
    assert first_match(rules, "cat /etc/shadow") is rules[2]
    assert first_match(rules, "ls -l", "echo rm -rf") is None  # ^ anchors the line
    # any candidate (typed, or as shown) matching is enough
    assert first_match(rules, "ls", "rm -rf /") is rules[0]
    assert first_match(rules, "", "   ") is None


@pytest.mark.parametrize(("rule", "expected"), [
    ("      - match: '(a)\\1'\n        action: deny\n        message: m\n",
     "p.yaml:4: policies[0].commands[0].match: not a valid RE2 expression (invalid escape"
     " sequence: \\1); back-references and look-around are not supported"),
    ("      - match: '(?=x)'\n        action: deny\n        message: m\n",
     "p.yaml:4: policies[0].commands[0].match: not a valid RE2 expression (invalid perl"
     " operator: (?=); back-references and look-around are not supported"),
    ("      - match: '['\n        action: deny\n        message: m\n",
     "p.yaml:4: policies[0].commands[0].match: not a valid RE2 expression (missing ]: [);"
     " back-references and look-around are not supported"),
    ("      - match: ''\n        action: deny\n        message: m\n",
     "p.yaml:4: policies[0].commands[0].match: the expression must not be empty"),
    ("      - match: 'x'\n        action: block\n        message: m\n",
     "p.yaml:5: policies[0].commands[0].action: unknown action 'block' (choose from deny,"
     " alert, supervise)"),
    ("      - match: 'x'\n        action: deny\n        message: '  '\n",
     "p.yaml:6: policies[0].commands[0].message: must not be empty: it is what the"
     " technician is shown"),
    ("      - match: 'x'\n        action: deny\n",
     "p.yaml:4: policies[0].commands[0].message: required field is missing"),
    ("      - match: 'x'\n        action: deny\n        message: m\n        mesage: n\n",
     "p.yaml:7: policies[0].commands[0].mesage: unknown field 'mesage' (did you mean"
     " 'message'?)"),
    ("      - match: 42\n        action: deny\n        message: m\n",
     "p.yaml:4: policies[0].commands[0].match: expected text, got 42"),
    ("      - 'rm -rf'\n",
     "p.yaml:4: policies[0].commands[0]: expected a mapping, got 'rm -rf'"),
])
def test_a_bad_rule_is_one_line_naming_file_line_and_field(tmp_path: Path, rule: str,
                                                           expected: str) -> None:
    found = problems(tmp_path, f"policies:\n  - name: p\n    commands:\n{rule}")
    assert [p.replace(str(tmp_path) + "/", "") for p in found] == [expected]


def test_bad_supervision_and_commands_values(tmp_path: Path) -> None:
    found = problems(tmp_path, "policies:\n  - name: p\n    supervision: always\n"
                               "    commands: deny\n")
    assert [p.replace(str(tmp_path) + "/", "") for p in found] == [
        "p.yaml:3: policies[0].supervision: unknown supervision 'always' (write required or"
        " none)",
        "p.yaml:4: policies[0].commands: expected a list, got 'deny'"]


def test_a_message_is_one_printable_line(tmp_path: Path) -> None:
    long = "x" * 201
    found = problems(tmp_path, "policies:\n  - name: p\n    commands:\n      - match: a\n"
                               f"        action: deny\n        message: {long}\n")
    assert "longer than 200 characters" in found[0]
    found = problems(tmp_path, "policies:\n  - name: p\n    commands:\n      - match: a\n"
                               '        action: deny\n        message: "a\\u0007b"\n')
    assert "control characters are not allowed" in found[0]
    (policy,) = load_policies(write(tmp_path, "policies:\n  - name: p\n    commands:\n"
                                              "      - match: a\n        action: deny\n"
                                              "        message: \"two\\n  lines\"\n"))
    assert policy.rules.session.commands[0].message == "two lines"


def test_load_refuses_bad_rules(tmp_path: Path) -> None:
    with pytest.raises(PolicyError):
        load_policies(write(tmp_path, "policies:\n  - name: p\n    commands:\n"
                                      "      - {match: '(a)\\1', action: deny, message: m}\n"))


def test_matching_never_backtracks_catastrophically() -> None:
    rule = CommandRule("(a+)+$", CommandAction.DENY, "m")
    line = "a" * 100_000 + "!"
    started = time.monotonic()
    assert not rule.matches(line)
    assert time.monotonic() - started < 1.0  # Python's re takes longer than the universe


def test_oversized_expressions_are_refused() -> None:
    with pytest.raises(ValueError, match="longer than 1000 characters"):
        compile_pattern("a" * 1001)
    with pytest.raises(ValueError, match="not a valid RE2 expression"):
        compile_pattern("(((a{100}){100}){100})")  # its program would be far too large


def test_explain_shows_supervision_and_rules(tmp_path: Path) -> None:
    policies = load_policies(write(tmp_path, GOOD))
    tech = TechnicianFacts("bob", "Acme")
    pump = DeviceFacts("pump-1", frozenset({"infusion"}), None, "active")
    text = explain(policies, tech, pump)
    assert "Supervision: required (a hospital supervisor must watch the session)" in text
    assert ("    deny /^\\s*rm\\s+-\\w*r/: recursive deletes are not allowed on clinical"
            " devices (line 6)") in text
    data = explain_json(policies, tech, pump)["policy"]["rules"]
    assert data["supervision"] == "required"
    assert data["commands"][1] == {"match": "(?i)\\breboot\\b|shutdown", "action": "supervise",
                                   "message": "a restart needs a hospital supervisor watching",
                                   "line": 9}
    other = explain(policies, tech, DeviceFacts("ct", frozenset(), None, "active"))
    assert "Supervision: not required" in other and "Command rules: none" in other


def test_policy_check_prints_one_line_per_bad_rule_and_nothing_from_re2(
        tmp_path: Path, broker_run: Callable[..., CliResult]) -> None:
    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir()
    good.mkdir()
    write(bad, "policies:\n  - name: p\n    commands:\n"
               "      - {match: '(a)\\1', action: deny, message: m}\n"
               "      - {match: 'ok', action: nope, message: m}\n")
    result = broker_run(["policy", "check", bad])
    assert result.code == 1 and "Traceback" not in result.err
    (line,) = result.err_lines  # RE2 writes nothing of its own to stderr
    assert line.startswith("broker: ") and "2 problem(s)" in line
    assert result.out.splitlines() == [
        f"{bad}/p.yaml:4: policies[0].commands[0].match: not a valid RE2 expression"
        " (invalid escape sequence: \\1); back-references and look-around are not supported",
        f"{bad}/p.yaml:5: policies[0].commands[1].action: unknown action 'nope' (choose"
        " from deny, alert, supervise)"]
    ok = broker_run(["policy", "check", write(good, GOOD)])
    assert ok.code == 0 and ok.err == "", ok
