"""Expiry survives restarts: a grant that ends while the broker is down gives no session
after the restart, and a session cut by the stop is never resumed."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # loaded hosts are slow


def test_a_grant_that_ends_while_the_broker_is_down_gives_no_session(
        tmp_path: Path, sshd_device: SshdDevice) -> None:
    broker = BrokerProcess(tmp_path / "broker").init()
    broker.one_grant(sshd_device, duration="25s")
    grant = broker.cli_json("grant", "list")[0]
    end = datetime.fromisoformat(grant["end"])
    broker.serve()
    try:
        live = broker.popen_ssh("tech+dev", "sleep 60")
        time.sleep(1.5)
        assert live.poll() is None, live.stderr.read() if live.stderr else ""
        broker.stop()
        live.wait(timeout=10)  # the stop ends it
        time.sleep(max(0.0, (end - datetime.now(UTC)).total_seconds()) + 0.5)
        broker.serve()
        refused = broker.ssh("tech+dev", "echo should-not-run")
        assert refused.code != 0
        assert "should-not-run" not in refused.out
        assert "expired" in refused.err
        states = {g["id"]: g["state"] for g in broker.cli_json("grant", "list")}
        assert states[grant["id"]] == "expired"
    finally:
        broker.stop()
