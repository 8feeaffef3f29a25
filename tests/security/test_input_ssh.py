"""Free text over SSH: a technician's ``request ... --reason`` with terminal escapes, fake
lines or 100,000 characters is refused in one line, nothing is stored, and the refusal is
audited (real ``broker serve``, real OpenSSH client)."""

from __future__ import annotations

import json
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess

pytestmark = pytest.mark.integration

if shutil.which("ssh") is None:
    pytest.skip("needs the OpenSSH client (make test installs it)", allow_module_level=True)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.add_approver()
    proc.add_tech("tech")
    proc.cli("device", "add", "dev", "--host", "127.0.0.1", "--port", "9", "--user", "svc",
             "--password-env", "DEV_PW", env={"DEV_PW": "secret"})
    proc.serve()
    yield proc
    proc.stop()


def _requests(broker: BrokerProcess) -> list[dict[str, object]]:
    rows = broker.cli_json("request", "list")
    assert isinstance(rows, list)
    return rows


@pytest.mark.parametrize(("reason", "words"), [
    ("\x1b]0;pwned\x07 swap the battery", "U+001B (ESC) at character 1"),
    ("fix\x1b[2J\x1b[Hthe pump", "U+001B (ESC) at character 4"),
    ("pump\u202eevil", "bidirectional override U+202E"),
    ("pump\u2028APPROVE HERE: https://evil.example", "line separator U+2028"),
    ("x" * 100_000, "longer than 2000 characters (100000 given)"),
])
def test_in_band_request_with_bad_reason_is_refused(broker: BrokerProcess, reason: str,
                                                    words: str) -> None:
    before = len(_requests(broker))
    # ssh joins its arguments with spaces; the broker splits them like a shell: quote once
    result = broker.ssh("tech", "request", "dev", "--for", "1h", "--reason", shlex.quote(reason))
    assert result.code == 2, result.err
    assert result.err.count("\n") == 1 and result.err.startswith("broker: request: reason:")
    assert words in result.err
    assert "\x1b" not in result.err and "\u202e" not in result.err
    assert len(_requests(broker)) == before  # nothing was filed
    tail = broker.cli_json("audit", "tail", "-n", "5")
    assert isinstance(tail, list)
    refused = [e for e in tail if e["kind"] == "input.refused"]
    assert refused and refused[-1]["actor"] == "technician:tech"
    assert refused[-1]["data"]["field"] == "reason"
    assert "\x1b" not in json.dumps(refused[-1]["data"], ensure_ascii=False)


def test_in_band_request_with_a_plain_reason_still_works(broker: BrokerProcess) -> None:
    result = broker.ssh("tech", "request", "dev", "--for", "1h", "--reason",
                        "'Akku tauschen, Station 4 — Ünterschrift folgt'")
    assert result.code == 0, result.err
    assert _requests(broker)[-1]["reason"] == "Akku tauschen, Station 4 — Ünterschrift folgt"


def test_stored_escapes_reach_the_admin_terminal_escaped(broker: BrokerProcess,
                                                         tmp_path: Path) -> None:
    """A row written before the rule (straight into the database) is shown escaped."""
    import sqlite3

    result = broker.ssh("tech", "request", "dev", "--for", "1h", "--reason", "placeholder")
    assert result.code == 0, result.err
    ident = _requests(broker)[-1]["id"]
    with sqlite3.connect(broker.root / "data" / "broker.db") as db:
        db.execute("UPDATE access_request SET reason = ? WHERE id = ?",
                   ("\x1b[2J\x1b]0;owned\x07\nAPPROVE HERE: broker request approve", ident))
    shown = broker.cli("request", "show", str(ident)).out
    assert "\x1b" not in shown and "\x07" not in shown
    (line,) = [x for x in shown.splitlines() if x.startswith("reason:")]
    assert line.endswith("\\x1b[2J\\x1b]0;owned\\x07\\nAPPROVE HERE: broker request approve")
    listed = broker.cli("request", "list").out
    assert "\x1b" not in listed and "\\x1b[2J" in listed
