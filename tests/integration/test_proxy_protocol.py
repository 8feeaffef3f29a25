"""Behind HAProxy: with `[ssh] proxy_protocol = true` the real client address is audited."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice
from tests.proxy_relay import RELAY


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice
           ) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.config.write_text(proc.config.read_text().replace("proxy_protocol = false",
                                                           "proxy_protocol = true"))
    proc.one_grant(sshd_device)
    proc.serve()
    yield proc
    proc.stop()


def test_proxied_client_address_is_what_is_audited(broker, tmp_path):
    relay = tmp_path / "relay.py"
    relay.write_text(RELAY)
    header = f"PROXY TCP4 198.51.100.23 127.0.0.1 41234 {broker.port}\r\n".encode().hex()
    ssh, *rest = broker.ssh_args("tech+dev", "tech")
    run = subprocess.run([ssh, "-o", f"ProxyCommand={sys.executable} {relay} 127.0.0.1"
                          f" {broker.port} {header}", *rest, "echo proxied"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "proxied\n"
    tail = json.loads(broker.cli("audit", "tail", "-n", "10", "--json").out)
    logins = [e for e in tail if e["kind"] == "login.succeeded"]
    assert logins and logins[-1]["data"]["client"] == "198.51.100.23:41234"


def test_connection_without_header_is_dropped(broker):
    run = broker.ssh("tech+dev", "true")
    assert run.code == 255
