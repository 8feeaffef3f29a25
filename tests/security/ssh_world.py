"""Shared parts of the SSH attack tests: a real sshd device, a real `broker serve`, the stock
OpenSSH client, and the audit rows the broker wrote (read back with `broker audit tail`)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import SSHD, BrokerProcess

pytestmark = pytest.mark.integration

if not Path(SSHD).exists() or shutil.which("ssh") is None:
    pytest.skip("the SSH attack tests need OpenSSH (sshd and ssh)", allow_module_level=True)

# Every refusal gets its own audit row in these tests (the flood test sets its own burst).
UNLIMITED = {"BROKER_SSH_REFUSAL_BURST": "100000"}  # (the harness default too)


def audit_rows(broker: BrokerProcess, n: int = 200) -> list[dict[str, Any]]:
    rows = json.loads(broker.cli("audit", "tail", "-n", str(n), "--json").out)
    assert isinstance(rows, list)
    return rows


def wait_for_row(broker: BrokerProcess, match: Callable[[dict[str, Any]], bool],
                 timeout: float = 5, n: int = 200) -> dict[str, Any]:
    """The newest audit row ``match`` accepts, waiting for background audit writes."""
    deadline = time.monotonic() + timeout
    while True:
        for row in reversed(audit_rows(broker, n)):
            if match(row):
                return row
        if time.monotonic() > deadline:
            raise AssertionError("no matching audit row")
        time.sleep(0.2)
