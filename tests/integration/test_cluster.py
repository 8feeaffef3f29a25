"""Two `broker serve` nodes sharing one real PostgreSQL (a throwaway cluster): a revoke,
a grant's end, a technician disable, a device retirement or a kill made anywhere cuts the
live sessions on every node within a second, through LISTEN/NOTIFY; a lost LISTEN connection
reconnects and re-syncs."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice
from tests.pg_kit import PostgresCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # loaded hosts are slow


class Cluster:
    def __init__(self, root: Path, url: str) -> None:
        self.a = BrokerProcess(root / "a").init().use_database(url, "node-a")
        self.a.add_approver()
        self.b = self.a.another_node(root / "b", "node-b")

    def serve(self) -> Cluster:
        self.a.serve()
        self.b.serve()
        return self

    def stop(self) -> None:
        self.a.stop()
        self.b.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresCluster,
            sshd_device: SshdDevice) -> Iterator[Cluster]:
    nodes = Cluster(tmp_path_factory.mktemp("cluster"), postgres.create_database())
    nodes.a.add_tech("tech")
    nodes.a.add_sshd_device("dev", sshd_device)
    nodes.serve()
    yield nodes
    nodes.stop()


def _events(node: BrokerProcess, kind: str) -> list[dict]:
    out = node.cli("audit", "export", "--format", "jsonl").out
    return [e for e in map(json.loads, out.splitlines()) if e["kind"] == kind]


def _wait_live(node: BrokerProcess, count: int, grant: int, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = [s for s in node.cli_json("session", "list") if s["grant"] == grant]
        if len(live) >= count:
            return live
        time.sleep(0.1)
    raise TimeoutError(f"{count} live sessions never started")


def _fresh_grant(cluster: Cluster, duration: str = "10m") -> tuple[str, int]:
    """A technician of this test's own (a grant is per technician and device, and another
    grant of the same pair would rightly keep a session alive) with a grant on `dev`."""
    tech = f"tech{next(_names)}"
    cluster.a.add_tech(tech)
    return tech, cluster.a.grant(tech, "dev", duration)


_names = iter(range(1, 1000))


def _sessions_on_both(cluster: Cluster, tech: str, grant: int,
                      device: str = "dev") -> list[subprocess.Popen]:
    procs = [node.popen_ssh(f"{tech}+{device}", "sleep 120", tech=tech)
             for node in (cluster.a, cluster.b)]
    live = _wait_live(cluster.a, 2, grant)
    assert {s["node"] for s in live} == {"node-a", "node-b"}
    return procs


class _CutWatch:
    """Wall-clock time at which each ssh process ends, taken by a thread per process that
    waits on it from before the cut is asked for, so a slow CLI exit is not counted."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        self._procs = procs
        self._ends: dict[int, float] = {}
        self._threads = [threading.Thread(target=self._wait, args=(i,), daemon=True)
                         for i in range(len(procs))]
        for thread in self._threads:
            thread.start()

    def _wait(self, i: int) -> None:
        self._procs[i].wait()
        self._ends[i] = time.time()

    def ends(self, timeout: float = 10) -> list[float]:
        deadline = time.monotonic() + timeout
        try:
            for thread in self._threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            ended = dict(self._ends)  # before the kill below ends the rest
        finally:
            for proc in self._procs:
                proc.kill()
        assert len(ended) == len(self._procs), "a session outlived the revocation"
        return [ended[i] for i in range(len(self._procs))]


def _ts(event: dict) -> float:
    return datetime.fromisoformat(event["ts"]).timestamp()


def test_both_nodes_serve_from_one_database(cluster: Cluster) -> None:
    grant = cluster.a.grant("tech", "dev")
    for node in (cluster.a, cluster.b):
        result = node.ssh("tech+dev", "echo hello-from-device")
        assert result.code == 0, result.err
        assert "hello-from-device" in result.out
    started = [e for e in _events(cluster.b, "session.started") if e["data"]["grant"] == grant]
    assert sorted(e["data"]["node"] for e in started) == ["node-a", "node-b"]


def test_revoke_on_one_node_cuts_sessions_on_both_within_a_second(cluster: Cluster) -> None:
    tech, grant = _fresh_grant(cluster)
    procs = _sessions_on_both(cluster, tech, grant)
    watch = _CutWatch(procs)
    cluster.b.cli("grant", "revoke", str(grant), "--reason", "incident")
    ends = watch.ends()
    revoked = [e for e in _events(cluster.a, "grant.revoked") if e["subject"] == f"grant:{grant}"]
    latencies = [end - _ts(revoked[-1]) for end in ends]
    assert max(latencies) <= 1.0, f"cut {latencies} s after the revoke"
    assert all("revoked" in proc.stderr.read() for proc in procs)


def test_grant_end_cuts_sessions_on_both_nodes_within_a_second(cluster: Cluster) -> None:
    tech, grant = _fresh_grant(cluster, "12s")
    procs = _sessions_on_both(cluster, tech, grant)
    watch = _CutWatch(procs)
    end = datetime.fromisoformat(cluster.a.cli_json("grant", "show", str(grant))["end"])
    ends = watch.ends(timeout=20)
    latencies = [t - end.timestamp() for t in ends]
    assert all(-0.05 <= lat <= 1.0 for lat in latencies), f"cut {latencies} s after the end"


def test_kill_from_the_other_node(cluster: Cluster) -> None:
    tech, grant = _fresh_grant(cluster)
    proc = cluster.a.popen_ssh(f"{tech}+dev", "sleep 120", tech=tech)
    (live,) = _wait_live(cluster.a, 1, grant)
    assert live["node"] == "node-a"
    watch = _CutWatch([proc])
    cluster.b.cli("session", "kill", live["id"], "--reason", "suspicious command")
    (end,) = watch.ends()
    (event,) = [e for e in _events(cluster.a, "session.kill_requested")
                if e["subject"] == f"session:{live['id']}"]
    assert end - _ts(event) <= 1.0
    assert "suspicious command" in proc.stderr.read()
    again = cluster.b.cli("session", "kill", live["id"], check=False)
    assert again.code == 1 and "not live" in again.err


def test_kill_of_an_unknown_session_is_one_line(cluster: Cluster) -> None:
    result = cluster.b.cli("session", "kill", "nope", check=False)
    assert result.code == 1 and result.err.strip() == "broker: no session 'nope'"


def test_disable_and_retire_cut_every_node(cluster: Cluster, sshd_device: SshdDevice) -> None:
    tech, grant = _fresh_grant(cluster)
    procs = _sessions_on_both(cluster, tech, grant)
    watch = _CutWatch(procs)
    cluster.b.cli("tech", "disable", tech)
    ends = watch.ends()
    disabled = _events(cluster.a, "technician.disabled")[-1]
    assert max(ends) - _ts(disabled) <= 1.0
    assert all("disabled" in proc.stderr.read() for proc in procs)

    cluster.a.add_sshd_device("dev2", sshd_device)
    tech = f"tech{next(_names)}"
    cluster.a.add_tech(tech)
    grant = cluster.a.grant(tech, "dev2")
    procs = _sessions_on_both(cluster, tech, grant, device="dev2")
    watch = _CutWatch(procs)
    cluster.b.cli("device", "retire", "dev2")
    ends = watch.ends()
    # the retirement's own row is stamped at the start of a transaction that goes on to
    # revoke every grant on the device; the grant's revocation row is the later stamp
    revoked = [e for e in _events(cluster.a, "grant.revoked") if e["subject"] == f"grant:{grant}"]
    assert max(ends) - _ts(revoked[-1]) <= 1.0


def test_a_lost_listen_connection_reconnects_and_resyncs(cluster: Cluster,
                                                         postgres: PostgresCluster) -> None:
    tech, grant = _fresh_grant(cluster)
    procs = _sessions_on_both(cluster, tech, grant)
    killed = postgres.psql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE application_name LIKE 'broker-feed:%'")
    assert int(killed) == 2  # one listener per node
    watch = _CutWatch(procs)
    cluster.a.cli("grant", "revoke", str(grant), "--reason", "after an outage")
    ends = watch.ends()
    revoked = [e for e in _events(cluster.a, "grant.revoked") if e["subject"] == f"grant:{grant}"]
    assert max(ends) - _ts(revoked[-1]) <= 2.0
    for node in (cluster.a, cluster.b):
        assert "change feed lost the database" in node.serve_log()
