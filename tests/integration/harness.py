"""Real parts for integration tests: an OpenSSH sshd device, a `broker serve` process, the
stock `ssh` client. Everything runs on loopback from temporary directories."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import free_port

__all__ = ["free_port"]  # tests import it from here

BROKER = str(Path(sys.executable).with_name("broker"))
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")


def keygen(path: Path, comment: str = "test") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f",
                    str(path)], check=True)
    return path


@dataclass
class SshdDevice:
    """A real OpenSSH server with its own config, accepting the broker's device key."""

    root: Path
    port: int = 0
    user: str = field(default_factory=getpass.getuser)
    proc: subprocess.Popen | None = None
    password_auth: bool = False  # also accept passwords (checked against /etc/shadow)
    # sshd's AuthorizedKeysFile, e.g. ".ssh/authorized_keys" for each account's own file;
    # None: ROOT/authorized_keys, holding the broker's login key
    authorized_keys_file: str | None = None
    extra_config: str = ""  # more sshd_config lines (the benchmarks raise MaxStartups)

    def start(self) -> SshdDevice:
        self.root.mkdir(parents=True, exist_ok=True)
        host_key = keygen(self.root / "host_key", "device-host")
        self.login_key = keygen(self.root / "broker_login_key", "broker")
        authorized = self.root / "authorized_keys"
        authorized.write_text((self.root / "broker_login_key.pub").read_text())
        authorized.chmod(0o600)
        self.port = free_port()
        config = self.root / "sshd_config"
        config.write_text(textwrap.dedent(f"""\
            Port {self.port}
            ListenAddress 127.0.0.1
            HostKey {host_key}
            PidFile {self.root / 'sshd.pid'}
            AuthorizedKeysFile {self.authorized_keys_file or authorized}
            StrictModes no
            UsePAM no
            PasswordAuthentication {"yes" if self.password_auth else "no"}
            KbdInteractiveAuthentication no
            PermitRootLogin prohibit-password
            PubkeyAuthentication yes
            Subsystem sftp internal-sftp
            LogLevel ERROR
            """) + self.extra_config)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


@dataclass
class Result:
    code: int
    out: str
    err: str


def _ahead_of_test_workers() -> None:
    """The broker under test runs at a higher CPU priority than the test workers (root only):
    the suite runs in parallel on a 2-core machine, and a latency the tests assert (a cut
    within a second) is the broker's, not the load the other workers make. In production the
    broker has its host to itself."""
    if os.geteuid() == 0:
        os.setpriority(os.PRIO_PROCESS, 0, -5)


class BrokerProcess:
    """`broker init` in a temp dir, then `broker serve` as a subprocess."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config = root / "broker.toml"
        self.port = free_port()
        self.http_port = free_port()
        self.devices_port = free_port()  # [webproxy] listen: the device web UIs' origin
        # BROKER_* overrides for serve and cli. Tests look for the audit row of each refusal
        # they cause, all from 127.0.0.1: no rate limit (tests/security tests the limit).
        # One broker process unless a test asks for workers ([broker] workers defaults to
        # the number of cores): the tests of single-node behaviour see one process.
        self.env: dict[str, str] = {"BROKER_SSH_REFUSAL_BURST": "100000",
                                    "BROKER_BROKER_WORKERS": "1"}
        self.proc: subprocess.Popen | None = None
        self.tech_keys: dict[str, Path] = {}

    def init(self) -> BrokerProcess:
        run = subprocess.run([BROKER, "init", "--dir", str(self.root)], capture_output=True,
                             text=True)
        assert run.returncode == 0, run.stderr
        self.config.write_text(self.config.read_text().replace(
            'listen = "0.0.0.0:2222"', f'listen = "127.0.0.1:{self.port}"').replace(
            'listen = "0.0.0.0:8443"', f'listen = "127.0.0.1:{self.http_port}"').replace(
            'listen = "0.0.0.0:8444"', f'listen = "127.0.0.1:{self.devices_port}"'))
        return self

    def use_database(self, url: str, node: str) -> BrokerProcess:
        """Point this broker at a shared database (PostgreSQL) under a node name."""
        self.env.update({"BROKER_BROKER_DATABASE_URL": url, "BROKER_BROKER_NODE": node})
        self.cli("migrate")
        return self

    def another_node(self, root: Path, node: str) -> BrokerProcess:
        """A second node of the same cluster: the same keys, policies and database, its own
        ports and recordings directory."""
        shutil.copytree(self.root / "data", root / "data", ignore=shutil.ignore_patterns(
            "*.db", "*.db-*", "*.log"))
        if (self.root / "policies").exists():
            shutil.copytree(self.root / "policies", root / "policies")
        other = BrokerProcess(root)
        text = self.config.read_text()
        other.config.write_text(text.replace(f"127.0.0.1:{self.port}", f"127.0.0.1:{other.port}")
                                .replace(f"127.0.0.1:{self.http_port}",
                                         f"127.0.0.1:{other.http_port}")
                                .replace(f"127.0.0.1:{self.devices_port}",
                                         f"127.0.0.1:{other.devices_port}"))
        other.env = {**self.env, "BROKER_BROKER_NODE": node}
        other.tech_keys = self.tech_keys
        return other

    def serve(self) -> BrokerProcess:
        self.log = open(self.root / "serve.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([BROKER, "serve", "--config", str(self.config)],
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env},
                                     preexec_fn=_ahead_of_test_workers)
        wait_for_port(self.port, self.proc)
        wait_for_port(self.http_port, self.proc)  # the portal may bind after the SSH listener
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)  # a drain with no session is quick; a loaded host is not
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if getattr(self, "log", None):
            self.log.close()

    def serve_log(self) -> str:
        return (self.root / "serve.log").read_text(errors="replace")

    def cli(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> Result:
        run = subprocess.run([BROKER, *args, "--config", str(self.config)], capture_output=True,
                             text=True, env={**os.environ, **self.env, **(env or {})},
                             timeout=60)
        if check:
            assert run.returncode == 0, f"broker {' '.join(args)}: {run.stderr}"
        return Result(run.returncode, run.stdout, run.stderr)

    def cli_json(self, *args: str) -> object:
        return json.loads(self.cli(*args, "--json").out)

    # -- fixtures of the directory ---------------------------------------------------------
    def add_tech(self, name: str, vendor: str = "Acme Medical") -> Path:
        key = keygen(self.root / f"{name}_key", name)
        self.cli("tech", "add", name, "--vendor", vendor, "--key", f"{key}.pub")
        self.tech_keys[name] = key
        return key

    def add_sshd_device(self, name: str, device: SshdDevice, *extra: str) -> None:
        self.cli("device", "add", name, "--host", "127.0.0.1", "--port", str(device.port),
                 "--user", device.user, "--key", str(device.login_key), "--model", "TestBox",
                 "--department", "Biomed", *extra)

    def add_approver(self) -> None:
        """The approver every test grant is approved by (`grant()` decides as it)."""
        self.cli("approver", "add", "approver", "--email", "approver@hospital.example",
                 "--group", "biomed")

    def one_grant(self, device: SshdDevice, duration: str = "2h") -> Path:
        """Technician `tech` with an approved grant on `dev` (the sshd); returns tech's key."""
        self.add_approver()
        key = self.add_tech("tech")
        self.add_sshd_device("dev", device)
        self.grant("tech", "dev", duration)
        return key

    def grant(self, tech: str, device: str, duration: str = "10m", *extra: str) -> int:
        request = self.cli_json("request", "create", "--tech", tech, "--device", device,
                                "--for", duration, "--reason", "integration test", *extra)
        assert isinstance(request, dict)
        decision = self.cli_json("request", "approve", str(request["id"]), "--as", "approver")
        assert isinstance(decision, dict) and decision["grant"], decision
        return int(decision["grant"])

    # -- the technician's side ---------------------------------------------------------------
    def ssh_args(self, user: str, tech: str, *, tty: bool = False) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.tech_keys[tech]),
                "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                "-o", "BatchMode=yes", *(["-tt"] if tty else ["-T"]),
                "-l", user, "127.0.0.1"]

    def ssh(self, user: str, *command: str, tech: str | None = None, tty: bool = False,
            input: str | None = None, timeout: float = 30) -> Result:
        tech = tech or user.split("+")[0]
        run = subprocess.run([*self.ssh_args(user, tech, tty=tty), *command],
                             capture_output=True, input=input, timeout=timeout,
                             text=True, errors="replace")
        return Result(run.returncode, run.stdout, run.stderr)

    def popen_ssh(self, user: str, *command: str, tech: str | None = None) -> subprocess.Popen:
        tech = tech or user.split("+")[0]
        return subprocess.Popen([*self.ssh_args(user, tech), *command],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def recordings(self) -> list[Path]:
        return sorted(p for p in (self.root / "recordings").iterdir() if p.is_dir())


# -- short-lived certificates (broker cert issue) ------------------------------------------
def issue_cert(broker: BrokerProcess, grant: int, key: Path) -> Path:
    cert = key.with_name(f"{key.name}-grant{grant}-cert.pub")
    broker.cli("cert", "issue", "--grant", str(grant), "--key", f"{key}.pub", "--out",
               str(cert))
    return cert


def cert_ssh(broker: BrokerProcess, user: str, key: Path, cert: Path, *command: str
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ssh", "-p", str(broker.port), "-i", str(key), "-o", f"CertificateFile={cert}",
         "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
         "-l", user, "127.0.0.1", *command], capture_output=True, text=True, timeout=30)


# -- a small file system of the test's own (full disks, read-only storage) ---------------------
def mount_tmpfs(mount: Path, options: str) -> None:
    """Mount a tmpfs with ``options`` at ``mount``; skip the test, saying why, where that is
    not allowed (unmount it with :func:`unmount`)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")


def unmount(mount: Path) -> None:
    subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)
