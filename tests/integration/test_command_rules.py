"""Policy command rules end to end: the real `ssh` client (in a real pseudo-terminal for
shells) through `broker serve` to a real sshd. Denied commands never run on the device
(marker files prove it), alert rules notify approvers by e-mail (real aiosmtpd), and every
decision is in the audit log and marked in the recording."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.approval_kit import Mailbox, body_text, set_config, smtp_server
from tests.integration.harness import BrokerProcess, SshdDevice

ID = uuid.uuid4().hex[:10]
POLICY = f"""\
policies:
  - name: guarded
    description: command rules for the test device
    commands:
      - match: 'forbidden-{ID}'
        action: deny
        message: "forbidden files are off limits"
      - match: '^\\s*echo\\s+alert-me'
        action: alert
        message: "someone said alert-me"
"""


class Terminal:
    """`ssh -tt` in a real pseudo-terminal, as a technician's terminal runs it."""

    def __init__(self, args: list[str]) -> None:
        self.controller, terminal = pty.openpty()
        self.proc = subprocess.Popen(args, stdin=terminal, stdout=terminal, stderr=terminal,
                                     start_new_session=True)
        os.close(terminal)
        self.seen = b""

    def type(self, data: bytes) -> None:
        os.write(self.controller, data)

    def read_until(self, needle: bytes, timeout: float = 20.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.seen and time.monotonic() < deadline:
            ready, _, _ = select.select([self.controller], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.controller, 65536)
                except OSError:
                    break
        assert needle in self.seen, self.seen[-2000:]
        return self.seen

    def settle(self, quiet: float = 0.5, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.controller], [], [], quiet)
            if not ready:
                return
            try:
                self.seen += os.read(self.controller, 65536)
            except OSError:
                return

    def close(self) -> int:
        if self.proc.poll() is None:
            self.type(b"\x03exit\r")
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        os.close(self.controller)
        return self.proc.returncode


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice,
           mailbox: tuple[Mailbox, int]) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    set_config(proc.root, "notify", smtp_host="127.0.0.1", smtp_port=mailbox[1],
               mail_from="broker@hospital.example")
    (proc.root / "policies").mkdir(exist_ok=True)
    (proc.root / "policies" / "rules.yaml").write_text(POLICY)
    proc.cli("policy", "check")
    proc.one_grant(sshd_device, "2h")
    proc.serve()
    yield proc
    proc.stop()


def audit(proc: BrokerProcess, kind: str) -> list[dict[str, object]]:
    events = proc.cli_json("audit", "tail", "-n", "500")
    assert isinstance(events, list)
    return [e for e in events if e["kind"] == kind]


def wait_for(predicate: object, timeout: float = 20.0, seen: Terminal | None = None) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.2)
    if seen is not None:
        seen.settle()
    raise TimeoutError("condition never held" + (f"; the terminal showed {seen.seen[-1500:]!r}"
                                                 if seen is not None else ""))


def markers(proc: BrokerProcess) -> list[str]:
    found = []
    for directory in proc.recordings():
        for path in directory.iterdir():
            for line in path.read_text(errors="replace").splitlines():
                if path.suffix == ".cast" and line.startswith("["):
                    event = json.loads(line)
                    if event[1] == "m":
                        found.append(event[2])
                elif path.suffix == ".jsonl" and '"marker"' in line:
                    found.append(json.loads(line)["label"])
    return found


def test_policy_explain_shows_the_rules(broker: BrokerProcess) -> None:
    shown = broker.cli("policy", "explain", "--tech", "tech", "--device", "dev").out
    assert "Command rules (the first that matches wins):" in shown
    assert f"deny /forbidden-{ID}/: forbidden files are off limits (line 5)" in shown


def test_a_denied_exec_command_never_reaches_the_device(broker: BrokerProcess,
                                                        tmp_path: Path) -> None:
    target = tmp_path / f"forbidden-{ID}-exec"
    result = broker.ssh("tech+dev", "touch", str(target))
    assert result.code == 1
    assert result.err.strip() == "broker: refused by policy: forbidden files are off limits"
    assert not target.exists()
    (event,) = [e for e in audit(broker, "command.denied")
                if str(target) in str(e["data"])]
    data = event["data"]
    assert isinstance(data, dict)
    assert data["channel"] == "exec" and data["command"] == f"touch {target}"
    assert data["rule"] == f"forbidden-{ID}"
    assert "command denied: forbidden files are off limits" in markers(broker)
    # a command no rule matches runs as before
    ok = broker.ssh("tech+dev", "echo", "plain-$((6*7))")
    assert ok.code == 0 and ok.out.strip() == "plain-42"


def test_a_shell_without_a_terminal_is_refused_under_command_rules(
        broker: BrokerProcess, tmp_path: Path) -> None:
    target = tmp_path / f"forbidden-{ID}-notty"
    result = broker.ssh("tech+dev", input=f"touch {target}\n")
    assert result.code == 1
    assert result.err.strip() == (
        "broker: a shell without a terminal is not available under this policy's command"
        " rules; use ssh -t, or give the command to run")
    assert not target.exists()


def test_an_alert_command_runs_and_approvers_are_told(broker: BrokerProcess,
                                                      mailbox: tuple[Mailbox, int]) -> None:
    result = broker.ssh("tech+dev", "echo", f"alert-me-{ID}")
    assert result.code == 0 and result.out.strip() == f"alert-me-{ID}"
    (event,) = [e for e in audit(broker, "command.alert") if ID in str(e["data"])]
    assert event["actor"] == "technician:tech" and event["subject"] == "dev"
    box = mailbox[0]
    (mail,) = wait_for(lambda: [m for m in box.to("approver@hospital.example")
                                if "Command alert" in str(m["Subject"])], timeout=30)
    body = body_text(mail)
    assert f"echo alert-me-{ID}" in body and "someone said alert-me" in body


@pytest.mark.timeout(300)  # a terminal, step by step, on a loaded CI host
def test_a_denied_shell_line_is_not_run(broker: BrokerProcess, tmp_path: Path) -> None:
    typed = tmp_path / f"forbidden-{ID}-typed"
    recalled = tmp_path / f"forbidden-{ID}-recalled"
    pasted = tmp_path / f"forbidden-{ID}-pasted"
    done = tmp_path / "allowed-ran"
    # AES-GCM: the cipher whose packets the broker's fast path (broker/ssh/fastpath.py)
    # opens itself; the typed bytes still reach the guard through the channel's reader
    ssh, *args = broker.ssh_args("tech+dev", "tech", tty=True)
    term = Terminal([ssh, "-c", "aes128-gcm@openssh.com", *args])
    try:
        term.read_until(b"this session is recorded")
        term.settle()
        # typed with editing keys: the line as the shell sees it is checked
        term.type(f"touch {typed}xx\x7f\x7f".encode())
        term.type(b"\r")
        term.read_until(b"broker: refused by policy: forbidden files are off limits")
        term.settle()
        # an allowed line: it runs, and its file exists
        term.type(f"touch {done}\r".encode())
        wait_for(done.exists, timeout=30, seen=term)
        # history recall (Up) then more text: the broker reads the line off the screen
        term.type(b"\x1b[A")
        term.settle()
        term.type(f"; touch {recalled}".encode())
        term.settle()
        before = term.seen.count(b"refused by policy")
        term.type(b"\r")
        wait_for(lambda: term.seen.count(b"refused by policy") > before or term.settle(),
                 timeout=10)
        # a bracketed paste of two lines: the second is refused, the first never runs
        term.type(f"\x1b[200~echo first-pasted\rtouch {pasted}\r\x1b[201~".encode())
        term.settle(quiet=1.0)
        term.type(b"\r")
        term.type(f"echo still-$((6*7))-{ID}\r".encode())
        term.read_until(f"still-42-{ID}".encode())
    finally:
        term.close()
    assert done.exists()
    assert not typed.exists() and not recalled.exists() and not pasted.exists()
    assert term.seen.count(b"broker: refused by policy: forbidden files are off limits") >= 3
    shell_denials = [e["data"] for e in audit(broker, "command.denied")
                     if isinstance(e["data"], dict) and e["data"].get("channel") == "shell"]
    commands = " ".join(str(d["command"]) for d in shell_denials)
    assert str(typed) in commands and str(recalled) in commands and str(pasted) in commands
    recalled_event = next(d for d in shell_denials if str(recalled) in str(d["command"]))
    assert recalled_event["typed_line_known"] is False
    assert any(str(typed) in m for m in markers(broker))
