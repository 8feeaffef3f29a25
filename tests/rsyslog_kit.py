"""A real rsyslog for the SIEM tests: ``rsyslogd -n -f CONF -i PIDFILE`` in a temp dir, with
imtcp on a free loopback port (plain, or TLS through the gtls driver), writing every message it
receives, unchanged (``%rawmsg%``), one per line to a file. No system syslog is touched."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.harness import free_port, wait_for_port

RSYSLOGD = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
GTLS_MODULE = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")


def need_rsyslog() -> None:
    if not Path(RSYSLOGD).exists():
        pytest.skip("rsyslog is not installed (apt-get install rsyslog; 'make test' does)")


def gtls_available() -> bool:
    return any(Path(d).glob("lmnsd_gtls.so") for d in
               ("/usr/lib/x86_64-linux-gnu/rsyslog", "/usr/lib/aarch64-linux-gnu/rsyslog",
                "/usr/lib/rsyslog", "/usr/lib64/rsyslog"))


@dataclass
class Frame:
    """One received RFC 5424 message, split into its parts."""

    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, str]
    msg: str


RFC5424 = re.compile(r'^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[(?:[^\]\\]|\\.)*\]|-) ?(.*)$')
SD_PARAM = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(line: str) -> Frame:
    match = RFC5424.match(line)
    assert match, f"not an RFC 5424 message: {line[:200]!r}"
    pri, ts, host, app, procid, msgid, sd, msg = match.groups()
    params = {k: re.sub(r"\\(.)", r"\1", v) for k, v in SD_PARAM.findall(sd)}
    return Frame(int(pri), ts, host, app, procid, msgid, params, msg)


@dataclass
class Rsyslog:
    root: Path
    port: int = field(default_factory=free_port)
    tls: dict[str, Path] | None = None  # ca, cert, key of the server; "client_auth": anything
    client_auth: bool = False
    proc: subprocess.Popen | None = None

    @property
    def output(self) -> Path:
        return self.root / "received.log"

    def config(self) -> str:
        module = 'module(load="imtcp" MaxSessions="50")'
        if self.tls is not None:
            mode = "x509/certvalid" if self.client_auth else "anon"
            module = (
                f'global(DefaultNetstreamDriver="gtls"'
                f' DefaultNetstreamDriverCAFile="{self.tls["ca"]}"'
                f' DefaultNetstreamDriverCertFile="{self.tls["cert"]}"'
                f' DefaultNetstreamDriverKeyFile="{self.tls["key"]}")\n'
                f'module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1"'
                f' StreamDriver.AuthMode="{mode}")')
        return f"""\
global(workDirectory="{self.root}" maxMessageSize="256k")
{module}
template(name="raw" type="string" string="%rawmsg%\\n")
ruleset(name="siem") {{
  action(type="omfile" file="{self.output}" template="raw" flushOnTXEnd="on"
         asyncWriting="off")
}}
input(type="imtcp" port="{self.port}" address="127.0.0.1" ruleset="siem")
"""

    def start(self) -> Rsyslog:
        need_rsyslog()
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "rsyslog.conf"
        conf.write_text(self.config())
        self.log = open(self.root / "rsyslogd.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [RSYSLOGD, "-n", "-f", str(conf), "-i", str(self.root / "rsyslogd.pid")],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_port(self.port, self.proc, timeout=15)
        except (RuntimeError, TimeoutError):
            raise RuntimeError(f"rsyslogd did not start: "
                               f"{(self.root / 'rsyslogd.out').read_text()[-2000:]}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
        with_pid = self.root / "rsyslogd.pid"
        if with_pid.exists():
            os.unlink(with_pid)

    def frames(self) -> list[Frame]:
        if not self.output.exists():
            return []
        return [parse(line) for line in self.output.read_text().splitlines() if line]

    def seqs(self) -> list[int]:
        return [int(f.sd["seq"]) for f in self.frames()]

    def wait_for_seqs(self, count: int, timeout: float = 20) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seqs = self.seqs()
            if len(seqs) >= count:
                time.sleep(0.3)  # anything more (a duplicate) would show up now
                return self.seqs()
            time.sleep(0.1)
        return self.seqs()
