"""The database unreachable under a live session (a real PostgreSQL, stopped and started):
new sessions are refused with one line at once; a live session within its grant goes on
through a short outage, and is cut once its revocation has gone unchecked for longer than
[broker] fail_closed_after; when the database is back, new sessions work again."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice
from tests.integration.test_drain import LiveShell
from tests.pg_kit import PostgresCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # loaded hosts are slow
REFUSED = "broker: this broker node cannot reach its database right now"


@pytest.fixture
def own_postgres() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster().start()  # its own: this test stops it
    yield cluster
    cluster.stop()


def test_database_outage_refuses_new_sessions_and_cuts_live_ones_after_the_grace(
        tmp_path: Path, own_postgres: PostgresCluster, sshd_device: SshdDevice) -> None:
    broker = BrokerProcess(tmp_path / "broker").init()
    broker.use_database(own_postgres.create_database(), "node-a")
    broker.env["BROKER_BROKER_FAIL_CLOSED_AFTER"] = "6s"
    broker.one_grant(sshd_device)
    broker.serve()
    shell = LiveShell([*broker.ssh_args("tech+dev", "tech"), "sh"])
    try:
        shell.send("echo up")
        shell.expect(shell.out, "up")
        time.sleep(8)  # longer than the grace: what counts is how long the database is away

        own_postgres.pause()  # a short outage: the live session rides it out
        time.sleep(2)
        args = [a.replace("LogLevel=ERROR", "LogLevel=INFO")  # ssh shows banners at INFO
                for a in broker.ssh_args("tech+dev", "tech")]
        refused = subprocess.run([*args, "echo new"], capture_output=True, text=True,
                                 timeout=20)
        assert refused.returncode == 255 and refused.stdout == ""
        assert [line for line in refused.stderr.splitlines()
                if line.startswith("broker:")] == [REFUSED + ", so no new session can be"
                                                   " checked or opened; try again shortly"]
        shell.send("echo during-outage")
        shell.expect(shell.out, "during-outage", timeout=3)
        own_postgres.resume()
        time.sleep(6)  # back, re-synced: no cut later either
        shell.send("echo after-outage")
        shell.expect(shell.out, "after-outage", timeout=3)
        assert shell.proc.poll() is None
        assert broker.ssh("tech+dev", "echo again", timeout=20).out == "again\n"

        own_postgres.pause()  # a long outage: cut after about 6 s
        lost = time.monotonic()
        cut = shell.expect(shell.err, "the session is closed", timeout=15)
        waited = time.monotonic() - lost
        # the grace runs from the last check that reached the database (up to ~1 s before the
        # pause), so the cut comes 6 s after that, not after the pause
        assert 4 < waited < 10, waited
        assert "could not confirm the grant" in cut[-1]
        assert shell.proc.wait(5) == 1

        own_postgres.resume()
        deadline = time.monotonic() + 15
        while (back := broker.ssh("tech+dev", "echo back", timeout=20)).code != 0:
            assert time.monotonic() < deadline, back.err
            time.sleep(0.5)
        assert back.out == "back\n"
    finally:
        shell.proc.kill()
        broker.stop()
