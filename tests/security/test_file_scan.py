"""Issue #21: uploads held at the broker and scanned over ICAP by a real c-icap + ClamAV
(tests/icap_kit.py) before they reach the device, end to end with the real ``sftp``, ``scp``
and ``scp -O`` against a real sshd device."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.icap_kit import EICAR, THREAT, ICAPScanner, available
from tests.integration.harness import BrokerProcess, SshdDevice, free_port, mount_tmpfs, unmount
from tests.security.ssh_world import UNLIMITED, audit_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
if (missing := available()) is not None:
    pytest.skip(missing, allow_module_level=True)

CLIENTS = ["sftp", "scp", "scp -O"]


@pytest.fixture(scope="module")
def scanner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ICAPScanner]:
    kit = ICAPScanner(tmp_path_factory.mktemp("icap")).start()
    yield kit
    kit.stop()


def make_broker(root: Path, device: SshdDevice, **scan: str) -> BrokerProcess:
    proc = BrokerProcess(root).init()
    proc.env.update(UNLIMITED)
    proc.env.update({f"BROKER_SCAN_{k.upper()}": v for k, v in scan.items()})
    proc.add_approver()
    proc.add_tech("tech")
    proc.add_sshd_device("dev", device)
    proc.grant("tech", "dev", "2h", "--protocols", "sftp,scp")
    proc.serve()
    return proc


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, device: SshdDevice,
           scanner: ICAPScanner) -> Iterator[BrokerProcess]:
    proc = make_broker(tmp_path_factory.mktemp("broker"), device, icap_url=scanner.url,
                       timeout="30s")
    yield proc
    proc.stop()


@pytest.fixture
def place(tmp_path: Path) -> Path:
    (tmp_path / "up").mkdir()
    return tmp_path


def upload(broker: BrokerProcess, client: str, src: Path, target: Path
           ) -> subprocess.CompletedProcess[str]:
    opts = ["-i", str(broker.tech_keys["tech"]), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]
    if client == "sftp":
        return subprocess.run(["sftp", "-P", str(broker.port), *opts, "-b", "-",
                               "tech+dev@127.0.0.1"], input=f"put {src} {target}\n",
                              capture_output=True, text=True, timeout=120)
    return subprocess.run(["scp", *(["-O"] if client == "scp -O" else []), "-P",
                           str(broker.port), *opts, str(src), f"tech+dev@127.0.0.1:{target}"],
                          capture_output=True, text=True, timeout=120)


def rows(broker: BrokerProcess, kind: str, since: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in audit_rows(broker) if r["kind"] == kind and r["seq"] > since]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def last_seq(broker: BrokerProcess) -> int:
    return max((int(r["seq"]) for r in audit_rows(broker, 5)), default=0)


def recorded(broker: BrokerProcess, before: set[Path]) -> Path:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        new = [p for p in broker.recordings() if p not in before]
        if new and json.loads((new[0] / "session.json").read_text()).get("ended_at"):
            return new[0]
        time.sleep(0.1)
    raise TimeoutError("no sealed session recording")


def spool(broker: BrokerProcess) -> list[Path]:
    directory = broker.root / "data" / "scan-spool"
    return sorted(directory.iterdir()) if directory.exists() else []


@pytest.mark.parametrize("client", CLIENTS)
def test_eicar_is_refused_with_the_verdict_and_never_reaches_the_device(broker, place, client):
    src = place / "eicar.com"
    src.write_bytes(EICAR)
    target = place / "up" / "eicar.com"
    since = last_seq(broker)
    before = set(broker.recordings())
    result = upload(broker, client, src, target)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("broker: ")]
    assert lines and "malware scanner found" in lines[0] and THREAT in lines[0], result.stderr
    assert not target.exists()
    row = rows(broker, "file.infected", since)[0]
    assert THREAT in row["data"]["reason"] and row["data"]["path"].endswith("eicar.com")
    assert spool(broker) == []
    # the recording shows the upload and the verdict it got
    session = recorded(broker, before)
    ops = [json.loads(line) for path in session.glob("s*-*.jsonl")
           for line in path.read_text().splitlines()]
    assert any(op["op"] == "upload" and THREAT in str(op.get("result")) for op in ops), ops


@pytest.mark.parametrize("client", CLIENTS)
def test_a_clean_file_arrives_byte_identical_after_the_scan(broker, place, client):
    src = place / "clean.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # c-icap streams > 2 MiB back
    target = place / "up" / "clean.bin"
    result = upload(broker, client, src, target)
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == \
        hashlib.sha256(src.read_bytes()).hexdigest()
    assert spool(broker) == []
    directory = broker.root / "data" / "scan-spool"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


@pytest.mark.parametrize("client", CLIENTS)
def test_a_spool_that_fills_refuses_the_upload_and_keeps_it_off_the_device(broker, place,
                                                                           client):
    """The data directory's spool takes no more (a 512 KiB tmpfs for a 2 MiB upload): the
    upload is refused with one line naming why, never reaches the device unscanned, is
    audited, and leaves nothing in the spool."""
    directory = broker.root / "data" / "scan-spool"
    directory.mkdir(mode=0o700, exist_ok=True)
    mount_tmpfs(directory, "size=512k,mode=0700")
    try:
        src = place / "large.bin"
        src.write_bytes(os.urandom(2 * 1024 * 1024))
        target = place / "up" / "large.bin"
        since = last_seq(broker)
        result = upload(broker, client, src, target)
        assert result.returncode == 1, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("broker: ")]
        assert lines, result.stderr
        assert "could not hold" in lines[-1] and "(No space left on device)" in lines[-1]
        assert not target.exists()
        row = rows(broker, "file.scan_failed", since)[0]
        assert "No space left on device" in row["data"]["reason"]
        assert spool(broker) == []
    finally:
        unmount(directory)


def test_scanner_down_with_on_error_refuse_keeps_the_file_off_the_device(broker, place,
                                                                         scanner):
    """The scanner stopped: the held upload never reaches the device; on_error refuse (the
    default) refuses it with the reason, and audits file.scan_failed."""
    src = place / "held.txt"
    src.write_text("held until scanned\n")
    target = place / "up" / "held.txt"
    scanner.stop()
    try:
        since = last_seq(broker)
        result = upload(broker, "scp", src, target)
        assert result.returncode == 1
        assert "could not be scanned" in result.stderr and "unreachable" in result.stderr
        assert not target.exists()
        assert rows(broker, "file.scan_failed", since)
        legacy = upload(broker, "scp -O", src, target)
        assert legacy.returncode == 1 and "could not be scanned" in legacy.stderr
        assert not target.exists()
    finally:
        scanner.start()


def test_scanner_down_with_on_error_allow_lets_the_file_through(tmp_path_factory, device,
                                                                place):
    proc = make_broker(tmp_path_factory.mktemp("allow"), device,
                       icap_url=f"icap://127.0.0.1:{free_port()}/srvclamav", on_error="allow",
                       timeout="5s")
    try:
        src = place / "unscanned.txt"
        src.write_text("no scanner today\n")
        for client in CLIENTS:
            target = place / "up" / f"unscanned-{client[-1]}.txt"
            since = last_seq(proc)
            result = upload(proc, client, src, target)
            assert result.returncode == 0, result.stderr
            assert target.read_text() == "no scanner today\n"
            row = rows(proc, "file.scan_failed", since)[0]
            assert "passed unscanned" in row["data"]["reason"]
    finally:
        proc.stop()


def test_a_resumed_sftp_upload_keeps_what_the_device_has(broker, place):
    """``reput`` sends only the missing tail: the broker holds and scans that, then writes
    it at its offset, leaving the part already on the device as it is."""
    src = place / "resume.bin"
    src.write_bytes(os.urandom(300_000))
    target = place / "up" / "resume.bin"
    target.write_bytes(src.read_bytes()[:100_000])
    result = subprocess.run(
        ["sftp", "-P", str(broker.port), "-i", str(broker.tech_keys["tech"]),
         "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
         "-b", "-", "tech+dev@127.0.0.1"], input=f"reput {src} {target}\n",
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert target.read_bytes() == src.read_bytes()


@pytest.mark.parametrize("client", ["scp", "scp -O"])
def test_a_recursive_upload_keeps_the_clean_files_and_drops_the_infected_one(broker, place,
                                                                             client):
    tree = place / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("clean a\n")
    (tree / "sub" / "b.txt").write_text("clean b\n")
    (tree / "sub" / "eicar.com").write_bytes(EICAR)
    opts = ["-i", str(broker.tech_keys["tech"]), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]
    result = subprocess.run(["scp", *(["-O"] if client == "scp -O" else []), "-r", "-P",
                             str(broker.port), *opts, str(tree),
                             f"tech+dev@127.0.0.1:{place}/up/"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert THREAT in result.stderr
    assert (place / "up" / "tree" / "a.txt").read_text() == "clean a\n"
    assert (place / "up" / "tree" / "sub" / "b.txt").read_text() == "clean b\n"
    assert not (place / "up" / "tree" / "sub" / "eicar.com").exists()
