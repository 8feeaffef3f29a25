"""How a session ends, as the technician sees it and as the audit records it: the revoker's
reason on the technician's terminal (as for a kill), and the real exit status in
session.ended."""

from __future__ import annotations

import subprocess
import time

from tests.integration.harness import BrokerProcess, SshdDevice


def _ended(broker: BrokerProcess) -> list[dict]:
    tail = broker.cli_json("audit", "tail", "-n", "500")
    assert isinstance(tail, list)
    return [e for e in tail if e["kind"] == "session.ended"]


def _wait_for_ended(broker: BrokerProcess, count: int) -> list[dict]:
    deadline = time.monotonic() + 15
    while len(ended := _ended(broker)) < count and time.monotonic() < deadline:
        time.sleep(0.2)
    return ended


def test_exit_status_and_the_revokers_reason(broker: BrokerProcess,
                                             sshd_device: SshdDevice) -> None:
    broker.add_tech("tech")
    broker.add_sshd_device("dev", sshd_device)
    grant = broker.grant("tech", "dev", "1h")
    done = broker.ssh("tech+dev", "exit 3")
    assert done.code == 3
    (first,) = _wait_for_ended(broker, 1)
    assert first["data"]["exit_status"] == 3

    live = subprocess.Popen(broker.ssh_args("tech+dev", "tech"), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert live.stdin is not None
        live.stdin.write("echo up\n")
        live.stdin.flush()
        time.sleep(1.5)
        broker.cli("grant", "revoke", str(grant), "--reason", "vendor finished early")
        code = live.wait(10)
        err = live.stderr.read() if live.stderr else ""
    finally:
        if live.poll() is None:
            live.kill()
    assert code == 1
    assert "was revoked: vendor finished early" in err, err
    ended = _wait_for_ended(broker, 2)
    assert ended[-1]["data"]["exit_status"] == 1
    refused = broker.ssh("tech+dev", "true")
    assert refused.code != 0 and "was revoked: vendor finished early" in refused.err
