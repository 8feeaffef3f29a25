"""A real ICAP malware scanner for tests: ClamAV's clamd on a unix socket and c-icap with its
virus_scan service (clamd_mod), both started in a temp dir with their own configs.

ClamAV's public database cannot be downloaded here, so the kit writes its own: an MD5 hash
signature (``.hdb``) of the EICAR test string, which clamd reports as
``Eicar-Test-Signature.UNOFFICIAL``. Start it once per test module (clamd takes seconds).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.integration.harness import free_port

CLAMD = shutil.which("clamd") or "/usr/sbin/clamd"
C_ICAP = shutil.which("c-icap") or "/usr/bin/c-icap"
MODULES = next((p.parent for p in sorted(Path("/usr/lib").glob("*/c_icap/virus_scan.so"))),
               Path("/usr/lib/x86_64-linux-gnu/c_icap"))
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
THREAT = "Eicar-Test-Signature"


def available() -> str | None:
    """Why the kit cannot run here, or None."""
    for path in (CLAMD, C_ICAP, str(MODULES / "virus_scan.so"), str(MODULES / "clamd_mod.so")):
        if not Path(path).exists():
            return f"{path} is missing (scripts/system-deps.sh installs c-icap," \
                   " libc-icap-mod-virus-scan and clamav-daemon)"
    return None


class ICAPScanner:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"icap://127.0.0.1:{self.port}/srvclamav"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> ICAPScanner:
        root = self.root
        (root / "db").mkdir(parents=True, exist_ok=True)
        digest = hashlib.md5(EICAR).hexdigest()  # the .hdb format is MD5
        (root / "db" / "test.hdb").write_text(f"{digest}:{len(EICAR)}:{THREAT}\n")
        user = "User root\n" if os.geteuid() == 0 else ""
        (root / "clamd.conf").write_text(
            f"LocalSocket {root}/clamd.sock\nDatabaseDirectory {root}/db\nForeground yes\n"
            f"LogFile {root}/clamd.log\nTemporaryDirectory {root}\n{user}")
        (root / "c-icap.conf").write_text(
            f"PidFile {root}/c-icap.pid\nCommandsSocket {root}/c-icap.ctl\nTimeout 30\n"
            "StartServers 1\nMaxServers 2\nThreadsPerChild 4\nMinSpareThreads 1\n"
            f"MaxSpareThreads 4\nPort 127.0.0.1:{self.port}\nTmpDir {root}\n"
            f"DebugLevel 1\nModulesDir {MODULES}\nServicesDir {MODULES}\n"
            "TemplateDir /usr/share/c_icap/templates/\n"
            "LoadMagicFile /etc/c-icap/c-icap.magic\n"
            f"ServerLog {root}/server.log\nAccessLog {root}/access.log\n"
            "Module common clamd_mod.so\n"
            f"clamd_mod.ClamdSocket {root}/clamd.sock\n"
            "Service antivirus_module virus_scan.so\nServiceAlias srvclamav virus_scan\n"
            "virus_scan.ScanFileTypes TEXT DATA EXECUTABLE ARCHIVE GIF JPEG MSOFFICE\n"
            "virus_scan.MaxObjectSize 2048M\nvirus_scan.DefaultEngine clamd\n")
        self.procs.append(self._spawn([CLAMD, "-c", str(root / "clamd.conf")], "clamd.out"))
        _wait(lambda: (root / "clamd.sock").exists(), 60, "clamd", root / "clamd.log")
        self.procs.append(self._spawn([C_ICAP, "-N", "-f", str(root / "c-icap.conf")],
                                      "c-icap.out"))
        _wait(self._listening, 30, "c-icap", root / "server.log")
        return self

    def _spawn(self, args: list[str], out: str) -> subprocess.Popen[bytes]:
        log = (self.root / out).open("wb")
        return subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def _listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        self.procs.clear()


def _wait(ready, timeout: float, what: str, log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise TimeoutError(f"{what} did not start: {tail}")
        time.sleep(0.2)
