"""[ssh] device_keepalive, seen from the device: `$SSH_CONNECTION` names the broker's upstream
connection (its source port), so two sessions printing the same value ran over one device
login. A technician's next session reuses the connection of the last one that ended by
itself; another technician, a cut session, and a lapsed keep-alive never do (the pool's own
rules, with a real sshd: tests/unit/test_upstream_pool.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice, wait_for_port
from tests.integration.test_metrics import scrape, value, wait_until


def _broker(root: Path, device: SshdDevice, keepalive: int) -> BrokerProcess:
    proc = BrokerProcess(root).init()
    proc.env["BROKER_SSH_DEVICE_KEEPALIVE"] = str(keepalive)
    proc.add_approver()
    for tech in ("tech", "other"):
        proc.add_tech(tech)
    proc.add_sshd_device("dev", device)
    for tech in ("tech", "other"):
        proc.grant(tech, "dev", "1h")
    proc.serve()
    wait_for_port(proc.http_port, proc.proc)  # /metrics tells when a connection is idle
    return proc


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice
           ) -> Iterator[BrokerProcess]:
    # long enough that a loaded CI machine never lets a kept connection lapse mid-test
    proc = _broker(tmp_path_factory.mktemp("broker"), sshd_device, keepalive=120)
    yield proc
    proc.stop()


def idle(broker: BrokerProcess) -> float:
    return value(scrape(broker), "broker_device_connections_idle")


def upstream_of(broker: BrokerProcess, tech: str = "tech") -> str:
    """The device's view of the broker's connection for one session; returns once the
    broker has the session's connection idle again (or closed it)."""
    before = idle(broker)
    logins = value(scrape(broker), "broker_device_logins_total", how="new")
    run = broker.ssh(f"{tech}+dev", "echo $SSH_CONNECTION")
    assert run.code == 0, run.err
    client_host, client_port, *_ = run.out.split()
    assert client_host == "127.0.0.1"
    # the session took a connection (new or kept) and gives it back when it has ended
    new = value(scrape(broker), "broker_device_logins_total", how="new") > logins
    wait_until(lambda: idle(broker) >= before + new, timeout=5)
    return client_port


def test_the_technicians_next_session_reuses_the_device_connection(
        broker: BrokerProcess) -> None:
    first = upstream_of(broker)
    assert upstream_of(broker) == first
    assert upstream_of(broker) == first
    # each session is still its own row and its own recording
    started = [e for e in map(json.loads, broker.cli("audit", "export", "--format", "jsonl")
                              .out.splitlines()) if e["kind"] == "session.started"]
    assert len({e["subject"] for e in started}) == 3, started
    verify = broker.cli("recordings", "verify", "--all")
    assert verify.code == 0, verify.err


def test_another_technician_never_gets_the_connection(broker: BrokerProcess) -> None:
    mine = upstream_of(broker, "tech")
    theirs = upstream_of(broker, "other")
    assert theirs != mine
    assert upstream_of(broker, "tech") == mine and upstream_of(broker, "other") == theirs


def test_a_cut_session_closes_its_device_connection(broker: BrokerProcess) -> None:
    live = broker.popen_ssh("tech+dev", "echo $SSH_CONNECTION; sleep 30")
    assert live.stdout is not None
    cut_port = live.stdout.readline().split()[1]
    (row,) = [s for s in broker.cli_json("session", "list")  # type: ignore[union-attr]
              if s["technician"] == "tech"]
    broker.cli("session", "kill", row["id"], "--reason", "test cut")
    assert live.wait(15) != 0
    assert upstream_of(broker) != cut_port


def test_a_lapsed_keepalive_logs_in_anew(tmp_path: Path, sshd_device: SshdDevice) -> None:
    broker = _broker(tmp_path, sshd_device, keepalive=1)
    try:
        first = upstream_of(broker)
        assert wait_until(lambda: idle(broker) == 0, timeout=10)  # the keep-alive lapsed
        assert upstream_of(broker) != first
    finally:
        broker.stop()

