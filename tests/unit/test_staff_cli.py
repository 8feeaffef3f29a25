"""``broker staff add|list|disable|totp enroll``: the real console script, good and bad input."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pyotp

from tests.conftest import Cli

PW = {"STAFF_PW": "a-long-enough-password"}


def test_staff_accounts_from_the_command_line(cli: Cli) -> None:
    assert cli("approver", "add", "alice", "--email", "alice@hospital.example").code == 0
    added = cli("staff", "add", "ann", "--role", "approver", "--approver", "alice",
                "--password-env", "STAFF_PW", "--json", env=PW)
    assert added.code == 0, added.err
    data = json.loads(added.out)
    assert (data["name"], data["role"], data["approver"], data["totp"]) == \
        ("ann", "approver", "alice", False)
    assert "a-long-enough-password" not in added.out + added.err
    enrolled = cli("staff", "totp", "enroll", "ann")
    assert enrolled.code == 0
    uri = enrolled.out.splitlines()[0]
    assert uri.startswith("otpauth://totp/") and "ann" in uri
    assert pyotp.parse_uri(uri).now().isdigit()
    assert "secret (to type in by hand)" in enrolled.out
    listed = json.loads(cli("staff", "list", "--json").out)
    assert [(u["name"], u["totp"], u["disabled"]) for u in listed] == [("ann", True, False)]
    assert cli("staff", "disable", "ann").code == 0
    assert json.loads(cli("staff", "list", "--json").out)[0]["disabled"] is True
    events = [json.loads(line)["kind"] for line in
              cli("audit", "export").out.splitlines()]
    assert [k for k in events if k.startswith("staff.")] == \
        ["staff.added", "staff.totp_enrolled", "staff.disabled"]


def test_bad_staff_input_is_one_line(cli: Cli) -> None:
    cases = [
        (["staff", "add", "x1", "--role", "admin", "--password-env", "NOPE"], {}, 2,
         "--password-env NOPE: that environment variable is not set"),
        (["staff", "add", "x2", "--role", "admin", "--password-env", "P"], {"P": "short"}, 2,
         "at least 12 characters"),
        (["staff", "add", "x3", "--role", "approver", "--password-env", "STAFF_PW"], PW, 2,
         "--approver NAME is required"),
        (["staff", "add", "x4", "--role", "admin", "--approver", "ghost", "--password-env",
          "STAFF_PW"], PW, 1, "no approver named 'ghost'"),
        (["staff", "add", "x5", "--role", "boss", "--password-env", "STAFF_PW"], PW, 2,
         "'boss' is not one of"),
        (["staff", "add", "bad name", "--role", "admin", "--password-env", "STAFF_PW"], PW, 2,
         "staff user name 'bad name' is not valid"),
        (["staff", "disable", "nobody"], {}, 1, "no staff user named 'nobody'"),
        (["staff", "totp", "enroll", "nobody"], {}, 1, "no staff user named 'nobody'"),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:  # each start-up costs ~1 s of imports
        results = list(pool.map(lambda case: cli(*case[0], env=case[1]), cases))
    for (args, _env, code, message), result in zip(cases, results, strict=True):
        assert result.code == code, (args, result.err)
        assert len(result.err_lines) == 1 and message in result.err, (args, result.err)
    assert cli("staff", "add", "dup", "--role", "auditor", "--password-env", "STAFF_PW",
               env=PW).code == 0
    again = cli("staff", "add", "dup", "--role", "auditor", "--password-env", "STAFF_PW",
                env=PW)
    assert again.code == 1 and "staff user 'dup' already exists" in again.err
