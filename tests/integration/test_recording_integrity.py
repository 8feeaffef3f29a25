"""Recordings as evidence, end to end: sealed and signed at session end, verified by the CLI,
tampering detected, and a kill -9 of the broker loses at most the last second."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice
           ) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.one_grant(sshd_device)
    proc.serve()
    yield proc
    proc.stop()


def wait_for(predicate, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError("condition never held")


def session_id(path) -> str:
    return path.name.split("-", 1)[1]


def test_session_is_sealed_and_verifies_then_tampering_is_named(broker):
    before = set(broker.recordings())
    marker = uuid.uuid4().hex
    broker.ssh("tech+dev", tty=True, input=f"echo sealed-{marker}\nexit\n")
    (session,) = wait_for(lambda: [p for p in broker.recordings() if p not in before
                                   and (p / "manifest.sig").exists()])
    ident = session_id(session)
    hits = broker.cli_json("recordings", "search", f"sealed-{marker}")
    assert isinstance(hits, list)
    streams = {h["stream"] for h in hits if h["session"] == ident}
    assert {"input", "output"} <= streams, hits  # typed by the technician, printed by the device
    ok = broker.cli("recordings", "verify", ident)
    assert ok.out.strip() == "ok"
    (cast,) = session.glob("term-*.cast")
    data = bytearray(cast.read_bytes())
    data[-5] ^= 0x01
    cast.write_bytes(bytes(data))
    bad = broker.cli("recordings", "verify", ident, check=False)
    assert bad.code == 1
    assert f"file {cast.name} was changed" in bad.out


def test_kill_9_mid_session_keeps_the_record_and_restart_seals_it(broker):
    before = set(broker.recordings())
    ssh = subprocess.Popen(broker.ssh_args("tech+dev", "tech", tty=True),
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert ssh.stdin is not None
    marker = uuid.uuid4().hex
    ssh.stdin.write(f"echo before-kill-{marker}\n".encode())
    ssh.stdin.flush()
    session = wait_for(lambda: [p for p in broker.recordings() if p not in before])[0]
    cast = wait_for(lambda: list(session.glob("term-*.cast")))[0]
    time.sleep(1.2)  # the flusher writes at least once a second
    assert broker.proc is not None
    broker.proc.send_signal(signal.SIGKILL)
    broker.proc.wait(5)
    ssh.kill()
    text = cast.read_text()
    assert f"before-kill-{marker}" in text, "output older than a second was lost"
    assert not (session / "manifest.json").exists()
    broker.serve()  # restart: the interrupted session is marked and sealed
    wait_for(lambda: (session / "manifest.sig").exists())
    meta = json.loads((session / "session.json").read_text())
    assert meta["end_reason"] == "interrupted" and meta["ended_at"]
    assert broker.cli("recordings", "verify", session_id(session)).out.strip() == "ok"
    tail = json.loads(broker.cli("audit", "tail", "-n", "30", "--json").out)
    assert any(e["kind"] == "session.interrupted" for e in tail)
