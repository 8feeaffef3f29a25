"""`broker serve` in a terminal prints plain lines there and writes its JSON log lines to the
log file; under a service manager (no terminal) the JSON lines go to stderr."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

from tests.integration.harness import BROKER, BrokerProcess


def _read_until(fd: int, needle: bytes, timeout: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:
                break
    return seen


def test_serve_in_a_terminal_prints_plain_lines_and_logs_json_to_the_file(
        tmp_path: Path) -> None:
    proc = BrokerProcess(tmp_path / "b").init()
    controller, terminal = pty.openpty()
    serve = subprocess.Popen([BROKER, "serve", "--config", str(proc.config)],
                             stdin=terminal, stdout=terminal, stderr=terminal,
                             env={**os.environ, **proc.env}, start_new_session=True)
    os.close(terminal)
    try:
        shown = _read_until(controller, b"broker: warning: no policy files", timeout=60)
        shown += _read_until(controller, b"\n", timeout=1)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(15)
        os.close(controller)
    lines = [line for line in shown.decode().splitlines() if line.strip()]
    assert any(line.startswith("broker: serving SSH on port") for line in lines), lines
    assert all(line.startswith("broker: ") for line in lines), lines  # no JSON on the screen
    text = (proc.root / "data" / "broker.log").read_text()
    logged = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert "serving" in [entry.get("event") for entry in logged], text[-2000:]


def test_serve_without_a_terminal_writes_json_to_stderr(tmp_path: Path) -> None:
    proc = BrokerProcess(tmp_path / "b").init().serve()

    def events() -> list[str]:
        return [json.loads(line).get("event") for line in proc.serve_log().splitlines()
                if line.startswith("{")]

    deadline = time.monotonic() + 20
    while "serving" not in events() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.stop()
    assert "serving" in events()
