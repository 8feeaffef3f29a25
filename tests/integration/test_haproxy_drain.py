"""An upgrade without dropping sessions: two `broker serve` nodes on one PostgreSQL behind the
shipped `deploy/haproxy.cfg` run by a real HAProxy. SIGTERM to node A while a session is live
on it: A's /readyz answers 503, HAProxy marks A down, new sessions land on node B, and A's
session goes on until it finishes by itself; then A exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice, free_port, wait_for_port
from tests.integration.test_drain import readyz
from tests.integration.test_haproxy import CONFIG, HAPROXY
from tests.pg_kit import PostgresCluster

pytestmark = pytest.mark.integration
PROXIED = 'proxy_protocol = true\nproxy_trusted = ["127.0.0.1/32"]'


class Setup:
    def __init__(self, root: Path, url: str, device: SshdDevice) -> None:
        self.a = BrokerProcess(root / "a").init()
        self.a.config.write_text(self.a.config.read_text().replace("proxy_protocol = false",
                                                                   PROXIED))
        self.a.use_database(url, "node-a")
        self.a.add_approver()
        self.a.add_tech("tech")
        self.a.add_sshd_device("dev", device)
        self.a.grant("tech", "dev", "1h")
        self.b = self.a.another_node(root / "b", "node-b")
        self.a.env["BROKER_BROKER_DRAIN_TIMEOUT"] = "30s"
        self.ports = {"ssh": free_port(), "web": free_port(), "devices": free_port()}
        self.haproxy_log = root / "haproxy.log"
        self.haproxy: subprocess.Popen | None = None
        self.release = root / "release"  # the live sessions finish once it exists

    def until_released(self) -> str:
        return f"while [ ! -e {self.release} ]; do sleep 0.2; done; echo finished"

    def start(self) -> Setup:
        self.a.serve()
        self.b.serve()
        env = {**os.environ, "SSH_BIND": f"127.0.0.1:{self.ports['ssh']}",
               "WEB_BIND": f"127.0.0.1:{self.ports['web']}",
               "DEVICES_BIND": f"127.0.0.1:{self.ports['devices']}"}
        for name, node in (("A", self.a), ("B", self.b)):
            env[f"NODE_{name}_SSH"] = f"127.0.0.1:{node.port}"
            env[f"NODE_{name}_WEB"] = f"127.0.0.1:{node.http_port}"
            env[f"NODE_{name}_DEVICES"] = f"127.0.0.1:{node.devices_port}"
            env[f"NODE_{name}_WEB_PORT"] = str(node.http_port)
        with self.haproxy_log.open("wb") as log:
            self.haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(CONFIG)], env=env,
                                            stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(self.ports["ssh"], self.haproxy)
        time.sleep(2.5)  # the first health checks mark both nodes up
        return self

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.terminate()
            self.haproxy.wait(10)
        self.a.stop()
        self.b.stop()

    def ssh_args(self, command: str) -> list[str]:
        args = self.a.ssh_args("tech+dev", "tech")
        args[args.index("-p") + 1] = str(self.ports["ssh"])
        return [*args, command]

    def wait_for_sessions(self, count: int, within: float = 20) -> None:
        deadline = time.monotonic() + within
        while len(self.started_on()) < count:
            assert time.monotonic() < deadline, f"{count} sessions did not start: " \
                f"{self.started_on()}"
            time.sleep(0.2)

    def started_on(self) -> list[str]:
        out = self.a.cli("audit", "export", "--format", "jsonl").out
        return [e["data"]["node"] for e in map(json.loads, out.splitlines())
                if e["kind"] == "session.started"]


@pytest.fixture
def setup(tmp_path: Path, postgres: PostgresCluster, sshd_device: SshdDevice
          ) -> Iterator[Setup]:
    if not Path(HAPROXY).exists():
        pytest.skip("haproxy is missing (apt-get install haproxy)")
    running = Setup(tmp_path, postgres.create_database(), sshd_device).start()
    yield running
    running.stop()


def test_sigterm_moves_new_sessions_to_the_other_node_while_the_live_one_finishes(
        setup: Setup) -> None:
    # one live session on each node (leastconn puts the second on the node without one)
    live = []
    for n in range(1, 3):
        live.append(subprocess.Popen(setup.ssh_args(setup.until_released()),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True))
        setup.wait_for_sessions(n)  # leastconn only sees a connection once it is open
    assert sorted(setup.started_on()) == ["node-a", "node-b"]
    live_a = [s for s in setup.a.cli_json("session", "list")  # type: ignore[union-attr]
              if s["node"] == "node-a"]
    assert len(live_a) == 1
    assert setup.a.proc is not None
    setup.a.proc.send_signal(signal.SIGTERM)
    status, body = readyz(setup.a)
    assert status == 503 and any(p.startswith("draining") for p in body["problems"])

    # at once, before HAProxy's checks: A accepts nothing, HAProxy redispatches to B
    right_away = subprocess.run(setup.ssh_args("echo right-away"), capture_output=True,
                                text=True, timeout=20)
    assert right_away.returncode == 0 and right_away.stdout == "right-away\n", right_away

    deadline = time.monotonic() + 10  # two failed checks, 2 s apart
    while b"node-a is DOWN" not in setup.haproxy_log.read_bytes():
        assert time.monotonic() < deadline, setup.haproxy_log.read_text()
        time.sleep(0.2)
    assert b"503" in setup.haproxy_log.read_bytes()
    for n in range(3):
        run = subprocess.run(setup.ssh_args(f"echo new-{n}"), capture_output=True, text=True,
                             timeout=20)
        assert run.returncode == 0 and run.stdout == f"new-{n}\n", run.stderr
    assert setup.started_on()[2:] == ["node-b"] * 4

    # A's session is still up, and finishes by itself; then A exits 0
    assert setup.a.proc.poll() is None
    assert all(proc.poll() is None for proc in live)
    setup.release.touch()
    told = 0
    for proc in live:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and out == "finished\n", err
        told += "broker: this broker node is draining for maintenance" in err
    assert told == 1  # the session on A, not the one on B
    assert setup.a.proc.wait(10) == 0
    ended = [e for e in map(json.loads, setup.a.cli("audit", "export", "--format",
                                                    "jsonl").out.splitlines())
             if e["kind"] == "node.drained"]
    assert ended and ended[-1]["data"]["cut"] == 0 and ended[-1]["data"]["ended"] == 1
