"""The broker in front of the project's simulated device, logging in with a vaulted password."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, free_port, wait_for_port

PASSWORD = "pump-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def pump(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port = free_port()
    root = tmp_path_factory.mktemp("pump")
    proc = subprocess.Popen([sys.executable, "-m", "broker.demo", "--root", str(root),
                             "--port", str(port)], env={**os.environ, "DEVICE_PASSWORD": PASSWORD},
                            stdout=subprocess.DEVNULL)
    wait_for_port(port, proc)
    yield port
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="module")
def pump_broker(broker: BrokerProcess, pump: int) -> BrokerProcess:
    broker.add_tech("sim-tech", vendor="B. Braun")
    broker.cli("device", "add", "pump-7", "--host", "127.0.0.1", "--port", str(pump),
               "--user", "service", "--password-env", "PUMP_PW", "--tag", "infusion",
               env={"PUMP_PW": PASSWORD})
    broker.grant("sim-tech", "pump-7")
    return broker


def test_exec_on_simulated_pump(pump_broker):
    result = pump_broker.ssh("sim-tech+pump-7", "status")
    assert result.code == 0
    assert "Infusomat" in result.out and "battery" in result.out


def test_shell_on_simulated_pump(pump_broker):
    result = pump_broker.ssh("sim-tech+pump-7", tty=True, input="config show\rexit\r")
    assert result.code == 0, result.err
    assert "pump-7>" in result.out and "rate_limit" in result.out


def test_device_password_never_reaches_the_technician_or_the_logs(pump_broker):
    result = pump_broker.ssh("sim-tech+pump-7", tty=True, input="whoami\rexit\r")
    assert PASSWORD not in result.out + result.err
    assert PASSWORD not in pump_broker.serve_log()
    database = (pump_broker.root / "data" / "broker.db").read_bytes()
    assert PASSWORD.encode() not in database
    for path in _settled_recordings(pump_broker.root / "recordings"):
        assert PASSWORD.encode() not in path.read_bytes()


def _settled_recordings(root: Path, timeout: float = 10.0) -> list[Path]:
    """Every file under ``root`` once the broker has sealed each session (manifest and chain
    head written, no temporary file of theirs left): the broker seals after the technician's
    client has gone, so a scan any sooner races the seal's files coming and going."""
    deadline = time.monotonic() + timeout
    while True:
        files = [p for p in root.rglob("*") if p.is_file()]
        sessions = [d for d in root.iterdir() if d.is_dir()]
        settled = (sessions and all((d / "manifest.json").is_file() for d in sessions)
                   and not any(p.name.endswith(".tmp") for p in files))
        if settled:
            return files
        assert time.monotonic() < deadline, f"recordings not sealed within {timeout:g} s"
        time.sleep(0.05)


def test_device_host_key_is_pinned_on_first_use(pump_broker):
    pump_broker.ssh("sim-tech+pump-7", "status")
    shown = pump_broker.cli_json("device", "show", "pump-7")
    assert isinstance(shown, dict) and shown["host_key_pinned"] is True
