"""`broker demo` as a newcomer runs it: the printed walk-through's commands, pasted into a
shell, do what the comments say; Ctrl-C says where the data went."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.integration.harness import BROKER, free_port


class Output:
    """Everything a process prints, collected by a thread."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while needle not in self.text and time.monotonic() < deadline:
            time.sleep(0.1)
        assert needle in self.text, self.text
        return self.text


def _sh(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_the_walkthrough_works_as_pasted(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    demo = subprocess.Popen([BROKER, "demo", "--dir", str(root), "--ssh-port",
                             str(free_port()), "--http-port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output = Output(demo)
        text = output.wait_for("Press Ctrl-C here to stop the demo.")
        commands = [line.strip() for line in text.splitlines()
                    if line.startswith("  ") and not line.strip().startswith("#")
                    and line.strip()]
        (export,) = [c for c in commands if c.startswith("export PATH=")]
        env = {**os.environ}
        env.update(dict(re.findall(r"(\w+)=(\S+)", export.removeprefix("export "))))
        env["PATH"] = env["PATH"].replace("$PATH", os.environ["PATH"])

        def run(prefix: str) -> subprocess.CompletedProcess[str]:
            (command,) = [c for c in commands if c.startswith(prefix)][:1]
            return _sh(command.split("  #")[0], env)

        ssh_status = next(c for c in commands if c.endswith("alice+pump-7@broker-demo status"))
        refused = _sh(ssh_status, env)
        assert refused.returncode != 0 and "refused" in refused.stderr
        assert run("broker request create").returncode == 0
        approved = run("broker request approve 1")
        assert approved.returncode == 0, approved.stderr
        works = _sh(ssh_status, env)
        assert works.returncode == 0 and "Infusomat" in works.stdout + works.stderr, works
        shell = next(c for c in commands if "alice+pump-7@broker-demo " in c and "#" in c
                     and "interactive" in c).split("  #")[0]
        typed = subprocess.run(["bash", "-c", shell.replace("ssh ", "ssh -tt ", 1)],
                               input="status\nexit\n", capture_output=True, text=True,
                               env=env, timeout=60, check=False)
        assert typed.returncode == 0, typed.stderr
        replay = run("broker replay --last")
        assert replay.returncode == 0, replay.stderr
        assert "term-0.cast" in replay.stdout and "status" in replay.stdout
        verify = run("broker audit verify")
        assert verify.returncode == 0, verify.stderr
        assert run("broker grant revoke 1").returncode == 0
        assert _sh(ssh_status, env).returncode != 0
    finally:
        demo.send_signal(signal.SIGINT)
        demo.wait(30)
    output.thread.join(10)
    assert f"demo stopped; its data stays in {root}" in output.text
