"""The shipped `deploy/haproxy.cfg`, run by a real HAProxy in front of the broker: SSH goes
through with a PROXY v2 header (the technician's own address is what gets audited), the web
side passes through to the broker's HTTPS, and health checks ask /readyz."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice, free_port, wait_for_port

pytestmark = pytest.mark.integration
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice
           ) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.config.write_text(proc.config.read_text().replace(
        "proxy_protocol = false", 'proxy_protocol = true\nproxy_trusted = ["127.0.0.1/32"]'))
    proc.one_grant(sshd_device)
    proc.serve()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def haproxy(broker: BrokerProcess) -> Iterator[dict[str, int]]:
    if not Path(HAPROXY).exists():
        pytest.skip("haproxy is missing (apt-get install haproxy)")
    ports = {"ssh": free_port(), "web": free_port(), "devices": free_port()}
    env = {**os.environ, "SSH_BIND": f"127.0.0.1:{ports['ssh']}",
           "WEB_BIND": f"127.0.0.1:{ports['web']}",
           "DEVICES_BIND": f"127.0.0.1:{ports['devices']}"}
    for node in ("A", "B"):  # both "nodes" are the one broker here
        env[f"NODE_{node}_SSH"] = f"127.0.0.1:{broker.port}"
        env[f"NODE_{node}_WEB"] = f"127.0.0.1:{broker.http_port}"
        env[f"NODE_{node}_DEVICES"] = f"127.0.0.1:{broker.devices_port}"
        env[f"NODE_{node}_WEB_PORT"] = str(broker.http_port)
    check = subprocess.run([HAPROXY, "-c", "-f", str(CONFIG)], env=env, capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(CONFIG)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(ports["ssh"], proc)
        wait_for_port(ports["web"], proc)
        wait_for_port(ports["devices"], proc)
        time.sleep(2.5)  # the first health checks mark the servers up
        yield ports
    finally:
        proc.terminate()
        proc.wait(10)


def test_ssh_through_haproxy_audits_the_technicians_address(broker: BrokerProcess,
                                                            haproxy: dict[str, int]) -> None:
    args = broker.ssh_args("tech+dev", "tech")
    args[args.index("-p") + 1] = str(haproxy["ssh"])
    # the technician connects from 127.0.0.2; HAProxy itself reaches the broker from 127.0.0.1
    run = subprocess.run([args[0], "-b", "127.0.0.2", *args[1:], "echo via-haproxy"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "via-haproxy\n"
    tail = json.loads(broker.cli("audit", "tail", "-n", "10", "--json").out)
    logins = [e for e in tail if e["kind"] == "login.succeeded"]
    assert logins and logins[-1]["data"]["client"].startswith("127.0.0.2:")


def test_direct_connections_without_a_header_are_refused(broker: BrokerProcess,
                                                         haproxy: dict[str, int]) -> None:
    assert broker.ssh("tech+dev", "true").code == 255


def test_web_passes_through_to_the_brokers_https(broker: BrokerProcess,
                                                 haproxy: dict[str, int]) -> None:
    context = ssl.create_default_context(cafile=str(broker.root / "data" / "tls.crt"))
    context.check_hostname = False
    with urllib.request.urlopen(f"https://127.0.0.1:{haproxy['web']}/healthz",
                                context=context, timeout=10) as response:
        assert response.status == 200
        assert json.load(response)["ok"] is True


def test_device_origin_passes_through_on_its_own_port(broker: BrokerProcess,
                                                      haproxy: dict[str, int]) -> None:
    context = ssl.create_default_context(cafile=str(broker.root / "data" / "tls.crt"))
    context.check_hostname = False
    base = f"https://127.0.0.1:{haproxy['devices']}"
    with urllib.request.urlopen(f"{base}/w/_broker/broker.css", context=context,
                                timeout=10) as response:
        assert response.status == 200  # the sign-in page's style: the device origin answers
    for path in ("/healthz", "/staff/", "/approve/x"):  # and it serves nothing of the portal
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path, context=context, timeout=10)
        assert refused.value.code == 404
