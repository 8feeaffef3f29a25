"""`broker serve` with `[broker] workers = 2`: one supervisor, two worker processes sharing
the SSH and web ports (SO_REUSEPORT), real `ssh` clients, a real sshd device, SQLite.

Sessions land on both workers; a revoke cuts sessions on either worker within a second; a
killed worker is restarted (audited) and the sessions it held are closed in the database;
SIGTERM (and SIGINT) drain every worker and the supervisor exits 0; bad `workers` values and
what cannot be shared are refused with one line."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli, CliResult
from tests.integration.harness import BrokerProcess, SshdDevice, wait_for_port
from tests.integration.test_metrics import scrape, value
from tests.pg_kit import PostgresCluster

# each test starts real broker nodes (a supervisor and two workers) on a loaded machine
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
NODE = "node-x"
SERVING = re.compile(r"\((\d+) worker processes: ([\d, ]+)\)")


class Workers:
    """A `broker serve` with two workers, and what the tests ask of it."""

    def __init__(self, root: Path, device: SshdDevice, database_url: str | None = None,
                 **env: str) -> None:
        self.broker = BrokerProcess(root).init()
        if database_url is not None:
            self.broker.use_database(database_url, NODE)
        self.broker.env.update({"BROKER_BROKER_WORKERS": "2", "BROKER_BROKER_NODE": NODE,
                                "BROKER_BROKER_DRAIN_TIMEOUT": "3s", **env})
        self.broker.add_approver()
        self.broker.add_tech("tech")
        self.broker.add_sshd_device("dev", device)
        self.names = iter(range(1, 1000))

    def serve(self) -> Workers:
        """Start it; wait until both workers serve (a loaded machine may take longer than
        the harness's 15 s for the first port)."""
        with contextlib.suppress(TimeoutError):
            self.broker.serve()
        self.wait_serving()
        return self

    def serve_single(self) -> None:
        """Start it as one process (`workers = 1`)."""
        self.broker.env["BROKER_BROKER_WORKERS"] = "1"
        with contextlib.suppress(TimeoutError):
            self.broker.serve()
        wait_for_port(self.broker.port, self.broker.proc, timeout=120)

    @property
    def supervisor(self) -> subprocess.Popen:
        assert self.broker.proc is not None
        return self.broker.proc

    def wait_serving(self, timeout: float = 120) -> list[int]:
        """The pids the supervisor announced, once both workers serve."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = SERVING.search(self.broker.serve_log())
            if found:
                assert found.group(1) == "2"
                return [int(pid) for pid in found.group(2).split(", ")]
            assert self.supervisor.poll() is None, self.broker.serve_log()[-3000:]
            time.sleep(0.1)
        raise TimeoutError(f"the workers never all served: {self.broker.serve_log()[-3000:]}")

    def children(self) -> set[int]:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.supervisor.pid)],
                             capture_output=True, text=True).stdout
        return {int(pid) for pid in out.split()}

    def events(self, kind: str) -> list[dict]:
        out = self.broker.cli("audit", "export", "--format", "jsonl").out
        return [e for e in map(json.loads, out.splitlines()) if e["kind"] == kind]

    def fresh_grant(self) -> tuple[str, int]:
        """A technician of the test's own with a grant on `dev`."""
        tech = f"tech{next(self.names)}"
        self.broker.add_tech(tech)
        return tech, self.broker.grant(tech, "dev")

    def live(self, grant: int) -> list[dict]:
        listed = self.broker.cli_json("session", "list")
        assert isinstance(listed, list)
        return [s for s in listed if s["grant"] == grant]

    def sessions_on_both(self, tech: str, grant: int, most: int = 24
                         ) -> dict[str, tuple[subprocess.Popen, dict]]:
        """Open `sleep` sessions one by one until both workers hold one; per worker node
        name, one (ssh process, live session) pair. The kernel spreads connections by
        their addresses, so a few tries are enough."""
        procs: list[subprocess.Popen] = []
        for _ in range(most):
            procs.append(self.broker.popen_ssh(f"{tech}+dev", "sleep 120", tech=tech))
            live = self._wait_live(grant, len(procs))
            nodes = {s["node"] for s in live}
            if len(nodes) == 2:
                break
        assert nodes == {f"{NODE}/w0", f"{NODE}/w1"}, f"every session landed on {nodes}"
        started = {e["subject"].removeprefix("session:"): e
                   for e in self.events("session.started") if e["data"]["grant"] == grant}
        by_client_order = sorted(live, key=lambda s: s["started_at"])
        pairs: dict[str, tuple[subprocess.Popen, dict]] = {}
        for proc, session in zip(procs, by_client_order, strict=True):
            session["worker_pid"] = started[session["id"]]["data"]["worker_pid"]
            pairs.setdefault(session["node"], (proc, session))
        self.extra = [p for p in procs if all(p is not q for q, _ in pairs.values())]
        return pairs

    def _wait_live(self, grant: int, count: int, timeout: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.live(grant)
            if len(live) >= count:
                return live
            time.sleep(0.1)
        raise TimeoutError(f"{count} live sessions never started")

    def stop(self) -> None:
        for proc in getattr(self, "extra", []):
            proc.kill()
        self.broker.stop()


class ExitTimes:
    """When each ssh process ends (wall clock), watched from before the cut is asked for."""

    def __init__(self, procs: list[subprocess.Popen]) -> None:
        self.ends: dict[int, float] = {}
        self.threads = [threading.Thread(target=self._wait, args=(i, p), daemon=True)
                        for i, p in enumerate(procs)]
        for thread in self.threads:
            thread.start()

    def _wait(self, i: int, proc: subprocess.Popen) -> None:
        proc.wait()
        self.ends[i] = time.time()

    def collect(self, timeout: float) -> list[float]:
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert len(self.ends) == len(self.threads), "a session outlived the cut"
        return [self.ends[i] for i in range(len(self.threads))]


def _ts(event: dict) -> float:
    from datetime import datetime

    return datetime.fromisoformat(event["ts"]).timestamp()


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice
            ) -> Iterator[Workers]:
    cluster = Workers(tmp_path_factory.mktemp("workers"), sshd_device).serve()
    yield cluster
    cluster.stop()


def test_sessions_land_on_both_workers_and_a_revoke_cuts_them_within_a_second(
        workers: Workers) -> None:
    _revoke_cuts_sessions_on_both_workers(workers)


def test_on_postgresql_a_revoke_cuts_sessions_on_both_workers(
        tmp_path: Path, sshd_device: SshdDevice, postgres: PostgresCluster) -> None:
    """The same on PostgreSQL: each worker LISTENs for the change feed on its own."""
    cluster = Workers(tmp_path, sshd_device, postgres.create_database()).serve()
    try:
        _revoke_cuts_sessions_on_both_workers(cluster)
    finally:
        cluster.stop()


def _revoke_cuts_sessions_on_both_workers(workers: Workers) -> None:
    pids = workers.wait_serving()
    assert len(pids) == 2 and set(pids) == workers.children()
    tech, grant = workers.fresh_grant()
    pairs = workers.sessions_on_both(tech, grant)
    # each session is held by the worker process its audit row names
    assert {session["worker_pid"] for _, session in pairs.values()} == set(pids)
    procs = [proc for proc, _ in pairs.values()] + workers.extra
    watch = ExitTimes(procs)
    workers.broker.cli("grant", "revoke", str(grant), "--reason", "incident")
    ends = watch.collect(timeout=15)
    (revoked,) = [e for e in workers.events("grant.revoked")
                  if e["subject"] == f"grant:{grant}"]
    latencies = [end - _ts(revoked) for end in ends]
    assert max(latencies) <= 1.0, f"cut {latencies} s after the revoke"
    assert all("revoked" in proc.stderr.read() for proc in procs)
    assert workers.live(grant) == []
    workers.extra = []


def _live_total(found: dict) -> float:
    return sum(v for (name, _), v in found.items() if name == "broker_live_sessions")


def _every_scrape(workers: Workers, check: Callable[[dict], bool], count: int = 8,
                  timeout: float = 15) -> list[dict]:
    """``count`` scrapes in a row (each a new connection, which the kernel gives to either
    worker) for which ``check(found)`` holds, within ``timeout``; the last ones."""
    deadline, good = time.monotonic() + timeout, []
    while len(good) < count:
        found = scrape(workers.broker)
        good = [*good, found] if check(found) else []
        assert time.monotonic() < deadline, f"scrapes disagree: {_live_total(found)}"
        time.sleep(0.05)
    return good


def test_a_scrape_of_either_worker_answers_for_the_whole_node(workers: Workers) -> None:
    tech, grant = workers.fresh_grant()
    pairs = workers.sessions_on_both(tech, grant)
    procs = [proc for proc, _ in pairs.values()] + workers.extra
    live = len(workers.broker.cli_json("session", "list"))  # type: ignore[arg-type]
    found = _every_scrape(workers, lambda f: _live_total(f) == live)[-1]
    revoked = value(found, "broker_sessions_total", outcome="revoked")

    watch = ExitTimes(procs)
    workers.broker.cli("grant", "revoke", str(grant), "--reason", "metrics")
    watch.collect(timeout=15)
    workers.extra = []
    left = len(workers.broker.cli_json("session", "list"))  # type: ignore[arg-type]
    _every_scrape(workers, lambda f: _live_total(f) == left and value(
        f, "broker_sessions_total", outcome="revoked") == revoked + len(procs))


def test_log_lines_and_audit_events_name_the_worker(workers: Workers) -> None:
    pids = workers.wait_serving()
    lines = [json.loads(line) for line in workers.broker.serve_log().splitlines()
             if line.startswith("{")]
    serving = {(line["worker"], line["pid"]) for line in lines if line["event"] == "serving"}
    assert {pid for worker, pid in serving if worker != "supervisor"} >= set(pids)
    assert ("supervisor", workers.supervisor.pid) in serving
    # every row a worker writes names it, and the worker's node name agrees
    tech, grant = workers.fresh_grant()
    result = workers.broker.ssh(f"{tech}+dev", "true", tech=tech)
    assert result.code == 0, result.err
    rows = workers.events("session.started") + workers.events("session.ended")
    assert rows and all(e["data"]["worker"] in (0, 1) for e in rows)
    assert all(e["data"]["node"] == f"{NODE}/w{e['data']['worker']}"
               for e in rows if "node" in e["data"])
    assert {e["data"]["worker_pid"] for e in rows
            if e["data"].get("grant") == grant} <= set(pids)


def test_a_killed_worker_is_restarted_and_its_sessions_closed(workers: Workers) -> None:
    workers.wait_serving()
    tech, grant = workers.fresh_grant()
    pairs = workers.sessions_on_both(tech, grant)
    victim_proc, victim = pairs[f"{NODE}/w1"]
    survivor_proc, survivor = pairs[f"{NODE}/w0"]
    before = workers.children()
    os.kill(victim["worker_pid"], signal.SIGKILL)
    victim_proc.wait(15)  # its connection went with the worker
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = workers.children()
        if len(children) == 2 and children != before:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker 1 was not restarted: {workers.children()}")
    assert victim["worker_pid"] not in children and survivor["worker_pid"] in children
    line = (f"broker: worker 1 (pid {victim['worker_pid']}) exited (killed by SIGKILL);"
            " restarting it in 1 s")
    assert line in workers.broker.serve_log()
    (exited,) = [e for e in workers.events("node.worker_exited")
                 if e["data"]["worker_pid"] == victim["worker_pid"]]
    assert exited["subject"] == f"node:{NODE}" and exited["data"]["worker"] == 1
    assert exited["data"]["status"] == "killed by SIGKILL"
    # the restarted worker closed, in the database, the session its predecessor held
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(
            s["id"] == victim["id"] for s in workers.live(grant)):
        time.sleep(0.2)
    assert [s["id"] for s in workers.live(grant) if s["node"] == f"{NODE}/w1"] == []
    interrupted = [e for e in workers.events("session.interrupted")
                   if e["subject"] == f"session:{victim['id']}"]
    assert [e["data"]["node"] for e in interrupted] == [f"{NODE}/w1"]
    # the other worker's session went on, and the node takes new sessions on both workers
    assert survivor_proc.poll() is None
    assert survivor["id"] in {s["id"] for s in workers.live(grant)}
    for _ in range(4):
        result = workers.broker.ssh(f"{tech}+dev", "echo after-restart", tech=tech)
        assert result.code == 0 and "after-restart" in result.out, result.err
    for proc in [survivor_proc, *workers.extra]:
        proc.kill()
    workers.extra = []


@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGINT", "SIGINT")])
def test_a_stop_signal_drains_every_worker_and_the_supervisor_exits_0(
        tmp_path: Path, sshd_device: SshdDevice, signals: tuple[str, ...]) -> None:
    """SIGTERM: each worker tells its sessions, cuts them after the 3 s drain_timeout and
    exits; the supervisor exits 0. SIGINT twice: the second cuts at once (drain_timeout is
    a minute here)."""
    timeout = "3s" if len(signals) == 1 else "60s"
    cluster = Workers(tmp_path, sshd_device, BROKER_BROKER_DRAIN_TIMEOUT=timeout).serve()
    try:
        pids = cluster.wait_serving()
        tech, grant = cluster.fresh_grant()
        pairs = cluster.sessions_on_both(tech, grant)
        procs = [proc for proc, _ in pairs.values()] + cluster.extra
        environ = Path(f"/proc/{pids[0]}/environ").read_bytes().split(b"\0")
        (metrics_dir,) = [Path(v.split(b"=", 1)[1].decode()) for v in environ
                          if v.startswith(b"PROMETHEUS_MULTIPROC_DIR=")]
        assert any(metrics_dir.iterdir())  # the workers' metric files
        watch = ExitTimes(procs)
        started = time.time()
        cluster.supervisor.send_signal(getattr(signal, signals[0]))
        if len(signals) > 1:
            time.sleep(1.5)  # both workers are draining by now
            assert all(proc.poll() is None for proc in procs)
            cluster.supervisor.send_signal(getattr(signal, signals[1]))
        ends = watch.collect(timeout=30)
        assert cluster.supervisor.wait(30) == 0, cluster.broker.serve_log()[-3000:]
        took = [end - started for end in ends]
        if len(signals) == 1:
            assert all(2.5 <= t <= 25 for t in took), took
        else:
            assert all(t <= 20 for t in took), took  # the drain_timeout is 60 s
        for proc in procs:
            assert "this broker node is draining for maintenance" in proc.stderr.read()
        assert not any(Path(f"/proc/{pid}").exists() for pid in pids)
        assert not metrics_dir.exists()
        for kind in ("node.draining", "node.drained"):
            assert sorted(e["subject"] for e in cluster.events(kind)) == [
                f"node:{NODE}/w0", f"node:{NODE}/w1"]
        drained = cluster.events("node.drained")
        assert sum(e["data"]["cut"] for e in drained) == len(procs)
        assert all(e["data"]["interrupted"] == (len(signals) > 1) for e in drained)
        assert {e["data"]["worker_pid"] for e in drained} == set(pids)
        # each worker's checkpoints are a chain of their own, ending in a clean shutdown
        verified = cluster.broker.cli("audit", "verify")
        assert "ok" in verified.out.lower(), verified.out
    finally:
        cluster.stop()


def test_sessions_left_by_crashed_workers_are_closed_by_the_next_start(
        tmp_path: Path, sshd_device: SshdDevice) -> None:
    """The whole node is killed (power loss, kill -9): a start with one process closes, in
    the database, the sessions its two workers held, and a start with two workers (worker 0,
    before any other serves) those the single process held."""
    cluster = Workers(tmp_path, sshd_device).serve()
    try:
        tech, grant = cluster.fresh_grant()
        pairs = cluster.sessions_on_both(tech, grant)
        held = {session["id"]: node for node, (_, session) in pairs.items()}
        for pid in [*cluster.children(), cluster.supervisor.pid]:
            os.kill(pid, signal.SIGKILL)  # the workers first: no restart, no drain
        cluster.supervisor.wait(10)
        for proc in [p for p, _ in pairs.values()] + cluster.extra:
            proc.kill()
        assert {s["id"] for s in cluster.live(grant)} >= set(held)

        cluster.serve_single()
        interrupted = {e["subject"].removeprefix("session:"): e["data"]["node"]
                       for e in cluster.events("session.interrupted")}
        assert {k: v for k, v in interrupted.items() if k in held} == held
        assert cluster.live(grant) == []

        single = cluster.broker.popen_ssh(f"{tech}+dev", "sleep 120", tech=tech)
        (session,) = cluster._wait_live(grant, 1)
        assert session["node"] == NODE
        os.kill(cluster.supervisor.pid, signal.SIGKILL)
        cluster.supervisor.wait(10)
        single.kill()
        cluster.broker.env["BROKER_BROKER_WORKERS"] = "2"
        cluster.serve()
        (event,) = [e for e in cluster.events("session.interrupted")
                    if e["subject"] == f"session:{session['id']}"]
        assert event["data"]["node"] == NODE and event["data"]["worker"] == 0
        cluster.broker.cli("audit", "verify")  # crashes leave the evidence verifiable
    finally:
        cluster.stop()


# -- bad configuration: one line, no traceback, nothing left running --------------------
@pytest.mark.parametrize("value", ["0", "257", "two", "1.5", "-1", ""])
def test_a_bad_workers_override_is_one_line(cli_for: type[Cli], broker_dir: Path,
                                            value: str) -> None:
    result = cli_for(broker_dir)("serve", env={"BROKER_BROKER_WORKERS": value})
    assert result.code == 1
    assert result.err == (
        f"broker: BROKER_BROKER_WORKERS (environment): [broker] workers: expected a whole"
        f" number of processes from 1 to 256 (1: a single process), got {value!r}\n")


@pytest.mark.parametrize("value", ["0", "true", "2.5", '"many"', "300"])
def test_a_bad_workers_key_names_the_file(cli_for: type[Cli], broker_dir: Path,
                                          value: str) -> None:
    config = broker_dir / "broker.toml"
    config.write_text(config.read_text().replace("[broker]\n", f"[broker]\nworkers = {value}\n"))
    result = cli_for(broker_dir)("serve")
    assert result.code == 1 and result.err.count("\n") == 1
    assert result.err.startswith(f"broker: {config}: [broker] workers: expected a whole number"
                                 " of processes from 1 to 256")


def _serve(broker_dir: Path, **env: str) -> CliResult:
    return Cli(broker_dir)("serve", env={
        "BROKER_SSH_LISTEN": "127.0.0.1:0", "BROKER_HTTP_LISTEN": "127.0.0.1:0",
        "BROKER_WEBPROXY_LISTEN": "127.0.0.1:0", **env}, timeout=120)


def test_an_in_memory_database_cannot_be_shared(broker_dir: Path) -> None:
    result = _serve(broker_dir, BROKER_BROKER_WORKERS="3",
                    BROKER_BROKER_DATABASE_URL="sqlite:///:memory:")
    assert result.code == 1
    assert result.err == ("broker: [broker] workers = 3: an in-memory SQLite database cannot"
                          " be shared by several worker processes; use a database file or"
                          " workers = 1\n")


def test_a_port_in_use_is_refused_before_any_worker_starts(broker_dir: Path) -> None:
    import socket

    with socket.socket() as taken:  # a plain listener: SO_REUSEPORT must not share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(broker_dir, BROKER_BROKER_WORKERS="2",
                        BROKER_HTTP_LISTEN=f"127.0.0.1:{port}")
    assert result.code == 1
    assert result.err == (f"broker: [http] listen = '127.0.0.1:{port}': cannot listen:"
                          " Address already in use\n")


def test_a_worker_that_cannot_start_stops_the_supervisor(broker_dir: Path) -> None:
    """An un-migrated database: worker 0's one line, once; exit 1; no worker left."""
    result = _serve(broker_dir, BROKER_BROKER_WORKERS="2",
                    BROKER_BROKER_DATABASE_URL="sqlite:///data/fresh.db")
    assert result.code == 1
    (line,) = result.err_lines
    assert line.startswith(f"broker: database sqlite+aiosqlite:///{broker_dir}/data/fresh.db"
                           " is not initialised, expected "), line
    assert line.endswith(": run 'broker init' (new install) or 'broker migrate'"), line
    leftover = subprocess.run(["pgrep", "-f", f"--config {broker_dir}/broker.toml --worker"],
                              capture_output=True, text=True).stdout
    assert leftover == ""
