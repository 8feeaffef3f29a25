"""Graceful drain of a real `broker serve`: SIGTERM stops new sessions at once (and /readyz
answers 503), tells the live ones, lets them work until [broker] drain_timeout, then cuts
them, seals their recordings and exits 0."""

from __future__ import annotations

import json
import queue
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice

pytestmark = pytest.mark.integration
DRAIN_LINE = ("broker: this broker node is draining for maintenance; your session stays up to"
              " 3 s, then closes. Reconnect to continue on another node.")


class LiveShell:
    """A stock `ssh` shell session whose output is read line by line, as it comes."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _read(stream: object, sink: queue.Queue[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            sink.put(line.rstrip("\r\n"))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    @staticmethod
    def expect(sink: queue.Queue[str], wanted: str, timeout: float = 10) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = sink.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            seen.append(line)
            if wanted in line:
                return seen
        raise AssertionError(f"{wanted!r} not seen; got {seen!r}")


def readyz(broker: BrokerProcess) -> tuple[int, dict]:
    context = ssl.create_default_context(cafile=str(broker.root / "data" / "tls.crt"))
    context.check_hostname = False
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{broker.http_port}/readyz",
                                    context=context, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def test_sigterm_drains_live_sessions_then_exits_0(tmp_path: Path,
                                                   sshd_device: SshdDevice) -> None:
    broker = BrokerProcess(tmp_path / "broker").init()
    broker.env["BROKER_BROKER_DRAIN_TIMEOUT"] = "3s"
    broker.one_grant(sshd_device)
    broker.serve()
    shell = LiveShell([*broker.ssh_args("tech+dev", "tech"), "sh"])
    try:
        shell.send("echo before-drain")
        shell.expect(shell.out, "before-drain")
        assert readyz(broker)[0] == 200
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        shell.expect(shell.err, DRAIN_LINE, timeout=5)
        status, body = readyz(broker)
        assert status == 503 and any(p.startswith("draining") for p in body["problems"]), body
        refused = broker.ssh("tech+dev", "echo new", timeout=10)
        assert refused.code == 255 and "new" not in refused.out
        shell.send("echo during-drain")  # the live session keeps working
        shell.expect(shell.out, "during-drain", timeout=3)
        assert broker.proc.wait(15) == 0
        assert 2.5 < time.monotonic() - started < 10
        cut = shell.expect(shell.err, "drained for maintenance", timeout=5)
        assert cut[-1].startswith("broker: this broker node drained for maintenance")
        assert shell.proc.wait(5) == 1
    finally:
        shell.proc.kill()
        broker.stop()
    verified = broker.cli("recordings", "verify", "--all", check=False)
    assert verified.code == 0, verified.out + verified.err
    kinds = [e["kind"] for e in map(json.loads, broker.cli(
        "audit", "export", "--format", "jsonl").out.splitlines())]
    assert "node.draining" in kinds and "node.drained" in kinds
    recordings = broker.recordings()
    assert len(recordings) == 1 and (recordings[0] / "manifest.json").exists()
    meta = json.loads((recordings[0] / "session.json").read_text())
    assert "drained for maintenance" in meta["end_reason"]


def test_a_second_sigterm_cuts_at_once(tmp_path: Path, sshd_device: SshdDevice) -> None:
    broker = BrokerProcess(tmp_path / "broker").init()
    broker.env["BROKER_BROKER_DRAIN_TIMEOUT"] = "5m"
    broker.one_grant(sshd_device)
    broker.serve()
    live = broker.popen_ssh("tech+dev", "sleep 120")
    try:
        time.sleep(2)  # the session is open
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGTERM)
        time.sleep(1)
        assert broker.proc.poll() is None  # draining: 5 minutes allowed
        broker.proc.send_signal(signal.SIGTERM)
        assert broker.proc.wait(10) == 0
        _, err = live.communicate(timeout=5)
        assert "draining for maintenance; your session stays up to 5 min" in err
        assert "drained for maintenance" in err
        assert "broker: draining 1 live session(s) for up to 5 min" in broker.serve_log()
    finally:
        live.kill()
        broker.stop()
    assert broker.cli("recordings", "verify", "--all", check=False).code == 0
