"""Issue #21: file transfer rules (policy key ``files``) enforced on SFTP and on both scp
protocols, end to end with the real OpenSSH ``sftp`` and ``scp`` (default: SFTP; ``-O``:
legacy) against a real sshd device. Every refusal is checked where it matters: the client's
exit and message, the device's file system (nothing arrived), the audit row (``file.denied``)
and the session recording (the refused operation is in it)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice
from tests.security.ssh_world import UNLIMITED, audit_rows

# the module broker (four devices, four grants) is set up inside the first test's time
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

MAX = 64 * 1024
POLICY = """\
policies:
  - name: no-upload
    devices: {{names: [dev-noup]}}
    files: {{upload: deny}}
  - name: no-download
    devices: {{names: [dev-nodown]}}
    files: {{download: deny}}
  - name: rules
    devices: {{names: [dev-rules]}}
    files:
      max_size: 64K
      deny_names: ["*.exe", "secret*"]
      paths: ["{place}/allowed/**", "{place}/fw/*"]
  - name: open
    devices: {{names: [dev-open]}}
"""
DEVICES = ("dev-noup", "dev-nodown", "dev-rules", "dev-open")


@pytest.fixture(scope="module")
def place(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory 'on the device' (the sshd runs on this machine as this user)."""
    root = tmp_path_factory.mktemp("place")
    for sub in ("allowed", "fw", "outside", "local"):
        (root / sub).mkdir()
    return root


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, device: SshdDevice, place: Path
           ) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.env.update(UNLIMITED)
    (proc.root / "policies").mkdir(exist_ok=True)
    (proc.root / "policies" / "files.yaml").write_text(POLICY.format(place=place))
    proc.add_approver()
    proc.add_tech("tech")
    for name in DEVICES:
        proc.add_sshd_device(name, device)
        proc.grant("tech", name, "2h", "--protocols", "sftp,scp")
    proc.serve()
    yield proc
    proc.stop()


def opts(broker: BrokerProcess) -> list[str]:
    return ["-i", str(broker.tech_keys["tech"]), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "BatchMode=yes"]


def scp(broker: BrokerProcess, *args: str, legacy: bool = False
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["scp", *(["-O"] if legacy else []), "-P", str(broker.port),
                           *opts(broker), *args], capture_output=True, text=True, timeout=60)


def sftp(broker: BrokerProcess, device: str, *commands: str
         ) -> subprocess.CompletedProcess[str]:
    """Each command run by ``sftp -b -`` (a leading ``-`` lets the batch go on after it
    fails)."""
    return subprocess.run(["sftp", "-P", str(broker.port), *opts(broker), "-b", "-",
                           f"tech+{device}@127.0.0.1"], input="\n".join(commands) + "\n",
                          capture_output=True, text=True, timeout=60)


def remote(device: str, path: Path) -> str:
    return f"tech+{device}@127.0.0.1:{path}"


def payload(path: Path, size: int) -> str:
    path.write_bytes(os.urandom(size))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def denied_rows(broker: BrokerProcess, since: int, timeout: float = 5) -> list[dict]:
    """``file.denied`` audit rows newer than row id ``since`` (waiting for at least one)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in audit_rows(broker) if r["kind"] == "file.denied" and r["seq"] > since]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def last_id(broker: BrokerProcess) -> int:
    rows = audit_rows(broker, 5)
    return max((int(r["seq"]) for r in rows), default=0)


def newest_ops(broker: BrokerProcess, before: set[Path], pattern: str) -> list[dict]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        new = [p for p in broker.recordings() if p not in before]
        if new and json.loads((new[0] / "session.json").read_text()).get("ended_at"):
            return [json.loads(line) for path in sorted(new[0].glob(pattern))
                    for line in path.read_text().splitlines()]
        time.sleep(0.1)
    raise TimeoutError("no sealed session recording")



def assert_denied_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.startswith("broker: ")]
    assert lines, result.stderr
    assert "refused by policy" in lines[0] and all(w in lines[0] for w in words), lines


# -- whole directions ----------------------------------------------------------------------

@pytest.mark.parametrize("client", ["sftp", "scp", "scp -O"])
def test_upload_denied_nothing_arrives_download_still_works(broker, place, client):
    src = place / "local" / f"up-{client[-1]}.txt"
    digest = payload(src, 5000)
    target = place / "allowed" / src.name
    since = last_id(broker)
    before = set(broker.recordings())
    if client == "sftp":
        result = sftp(broker, "dev-noup", f"put {src} {target}")
    else:
        result = scp(broker, str(src), remote("dev-noup", target), legacy=client == "scp -O")
    assert result.returncode == 1
    assert_denied_line(result, "upload", "not allowed")
    assert not target.exists()
    row = denied_rows(broker, since)[0]
    assert row["subject"] == "dev-noup" and row["data"]["operation"] == "upload"
    ops = newest_ops(broker, before, "s*.jsonl")
    if client == "scp -O":
        assert ops[0]["op"] == "command" and ops[0]["direction"] == "upload"
    else:
        assert any(op.get("path") == str(target) and
                   str(op.get("result", "")).startswith("permission_denied: broker:")
                   for op in ops), ops
    # downloads are still allowed on this device, byte for byte
    (place / "allowed" / "existing.bin").write_bytes(src.read_bytes())
    back = place / "local" / f"back-{client[-1]}"
    down = scp(broker, remote("dev-noup", place / "allowed" / "existing.bin"), str(back),
               legacy=client == "scp -O")
    assert down.returncode == 0, down.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest


def test_changes_count_as_uploads(broker, place):
    (place / "allowed" / "keep.txt").write_text("keep\n")
    result = sftp(broker, "dev-noup", f"-mkdir {place}/allowed/newdir",
                  f"-rm {place}/allowed/keep.txt",
                  f"-rename {place}/allowed/keep.txt {place}/allowed/moved.txt",
                  f"-chmod 600 {place}/allowed/keep.txt",
                  f"-ln -s {place}/allowed/keep.txt {place}/allowed/link")
    assert result.stderr.count("broker: ") == 5, result.stderr
    assert (place / "allowed" / "keep.txt").read_text() == "keep\n"
    assert not (place / "allowed" / "newdir").exists()
    assert not (place / "allowed" / "moved.txt").exists()
    assert not (place / "allowed" / "link").exists()


@pytest.mark.parametrize("client", ["sftp", "scp", "scp -O"])
def test_download_denied_upload_still_works(broker, place, client):
    (place / "allowed" / "report.log").write_text("secret report\n")
    back = place / "local" / f"report-{client[-1]}"
    if client == "sftp":
        result = sftp(broker, "dev-nodown", f"get {place}/allowed/report.log {back}")
    else:
        result = scp(broker, remote("dev-nodown", place / "allowed" / "report.log"), str(back),
                     legacy=client == "scp -O")
    assert result.returncode == 1
    assert_denied_line(result, "download", "not allowed")
    assert not back.exists() or back.read_bytes() == b""
    src = place / "local" / f"fine-{client[-1]}.bin"
    digest = payload(src, 100_000)
    target = place / "outside" / src.name
    up = scp(broker, str(src), remote("dev-nodown", target), legacy=client == "scp -O")
    assert up.returncode == 0, up.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest


# -- names, paths, sizes -------------------------------------------------------------------

CLIENTS = ["sftp", "scp", "scp -O"]


def upload(broker: BrokerProcess, client: str, src: Path, target: str | Path
           ) -> subprocess.CompletedProcess[str]:
    if client == "sftp":
        return sftp(broker, "dev-rules", f"put {src} {target}")
    return scp(broker, str(src), remote("dev-rules", Path(target)) if isinstance(target, Path)
               else f"tech+dev-rules@127.0.0.1:{target}", legacy=client == "scp -O")


@pytest.mark.parametrize(("client", "name"), [
    ("sftp", "tool.exe"), ("sftp", "Tool.Exe."), ("scp", "TOOL.EXE"),
    ("scp", "secret-plan.txt"), ("scp -O", "Tool.eXe"), ("scp -O", "SECRET.txt")])
def test_denied_names_in_any_case(broker, place, client, name):
    src = place / "local" / "harmless.bin"
    payload(src, 1000)
    target = place / "allowed" / name
    since = last_id(broker)
    result = upload(broker, client, src, target)
    assert result.returncode == 1
    assert_denied_line(result, "deny_names")
    assert not target.exists() and not (place / "allowed" / name.rstrip(".")).exists()
    assert denied_rows(broker, since)


def test_legacy_scp_refuses_one_file_and_copies_the_others(broker, place):
    good, bad = place / "local" / "good.txt", place / "local" / "bad.exe"
    digest = payload(good, 3000)
    payload(bad, 3000)
    (place / "allowed" / "multi").mkdir()
    result = scp(broker, str(bad), str(good), remote("dev-rules", place / "allowed" / "multi"),
                 legacy=True)
    assert result.returncode == 1
    assert_denied_line(result, "bad.exe", "deny_names")
    assert hashlib.sha256((place / "allowed/multi/good.txt").read_bytes()).hexdigest() == digest
    assert not (place / "allowed" / "multi" / "bad.exe").exists()


def test_legacy_scp_download_refuses_a_denied_name_from_the_device(broker, place):
    (place / "allowed" / "tree").mkdir()
    (place / "allowed" / "tree" / "ok.txt").write_text("ok\n")
    (place / "allowed" / "tree" / "virus.exe").write_text("MZ\n")
    back = place / "local" / "tree-back"
    result = scp(broker, "-r", remote("dev-rules", place / "allowed" / "tree"), str(back),
                 legacy=True)
    assert result.returncode == 1
    assert_denied_line(result, "virus.exe", "deny_names")
    assert (back / "ok.txt").read_text() == "ok\n"
    assert not (back / "virus.exe").exists()


@pytest.mark.parametrize("client", ["sftp", "scp"])
def test_a_rename_to_a_denied_name_is_refused(broker, place, client):
    src = place / "local" / "innocent.txt"
    payload(src, 2000)
    target = place / "allowed" / f"innocent-{client}.txt"
    assert upload(broker, client, src, target).returncode == 0
    evil = place / "allowed" / f"evil-{client}.EXE"
    result = sftp(broker, "dev-rules", f"rename {target} {evil}")
    assert result.returncode == 1
    assert_denied_line(result, "deny_names")
    assert target.exists() and not evil.exists()
    # a link under an allowed name to a denied one, or to a place outside, is refused too
    (place / "outside" / "passwd").write_text("root:x:0:0\n")
    result = sftp(broker, "dev-rules", f"-ln -s {place}/outside/passwd {place}/allowed/pw",
                  f"-ln -s ../outside/passwd {place}/allowed/pw2",
                  f"-ln {target} {place}/allowed/hard.exe")
    assert result.stderr.count("broker: ") == 3, result.stderr
    assert not any((place / "allowed" / n).exists() for n in ("pw", "pw2", "hard.exe"))


@pytest.mark.parametrize(("client", "where"), [
    ("sftp", "outside/x.txt"), ("sftp", "allowed/../outside/y.txt"),
    ("scp", "fw/../outside/z.txt"), ("scp", "fw/sub/deep.txt"),
    ("scp -O", "allowed/../outside/w.txt"), ("scp -O", "fw/sub/deeper.txt")])
def test_paths_outside_the_allowed_trees_are_refused(broker, place, client, where):
    (place / "fw" / "sub").mkdir(exist_ok=True)
    src = place / "local" / "p.txt"
    payload(src, 500)
    target = f"{place}/{where}"
    result = upload(broker, client, src, target)
    assert result.returncode == 1
    assert_denied_line(result, "not under the allowed paths")
    assert not Path(os.path.normpath(target)).exists()


@pytest.mark.parametrize("client", CLIENTS)
def test_allowed_transfers_are_byte_identical(broker, place, client):
    src = place / "local" / "firmware.bin"
    digest = payload(src, MAX)  # exactly at the limit
    for target in (place / "fw" / f"image-{client[-1]}.bin",
                   place / "allowed" / "deep" / f"img-{client[-1]}.bin"):
        target.parent.mkdir(exist_ok=True)
        result = upload(broker, client, src, target)
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
        back = place / "local" / f"back-{target.name}"
        if client == "sftp":
            down = sftp(broker, "dev-rules", f"get {target} {back}")
        else:
            down = scp(broker, remote("dev-rules", target), str(back),
                       legacy=client == "scp -O")
        assert down.returncode == 0, down.stderr
        assert hashlib.sha256(back.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("client", CLIENTS)
def test_max_size_upload_is_refused_or_cut_at_the_limit(broker, place, client):
    src = place / "local" / "big.bin"
    payload(src, MAX + 1)
    target = place / "allowed" / f"big-{client[-1]}.bin"
    since = last_id(broker)
    result = upload(broker, client, src, target)
    assert result.returncode == 1
    assert_denied_line(result, "exceed the limit of 64K")
    assert denied_rows(broker, since)
    # scp -O: the C header names the size, nothing moves; SFTP: the write that would cross
    # the limit is refused, and the broker removes what arrived before it
    if client != "scp -O":
        removed = partial_rows(broker, since)
        assert [(r["data"]["path"], r["data"]["operation"]) for r in removed] == [
            (str(target), "remove-partial")], removed
    assert not target.exists()


def test_a_cut_upload_into_an_existing_file_opened_without_truncating_is_left(broker, place):
    """An upload that appends (``reput``) did not create what is in the file: the broker
    refuses the write past the limit but removes nothing."""
    src = place / "local" / "resume.bin"
    payload(src, MAX + 1)
    target = place / "allowed" / "resume.bin"
    target.write_bytes(b"x" * 1024)  # what a first, interrupted upload left
    since = last_id(broker)
    result = sftp(broker, "dev-rules", f"reput {src} {target}")
    assert result.returncode == 1
    assert_denied_line(result, "exceed the limit of 64K")
    assert target.exists() and target.stat().st_size <= MAX
    assert not partial_rows(broker, since, timeout=1)


def test_a_cut_scp_over_an_existing_file_does_not_remove_it(broker, place):
    """scp writes in place into "create or open": the broker's LSTAT finds the file there
    already, so the cut upload removes nothing that was on the device before."""
    src = place / "local" / "over.bin"
    payload(src, MAX + 1)
    target = place / "allowed" / "existing.bin"
    target.write_bytes(b"kept" * 256)
    since = last_id(broker)
    result = scp(broker, str(src), remote("dev-rules", target))
    assert result.returncode == 1
    assert_denied_line(result, "exceed the limit of 64K")
    assert target.exists()
    assert not partial_rows(broker, since, timeout=1)


def partial_rows(broker: BrokerProcess, since: int, timeout: float = 5) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in audit_rows(broker) if r["seq"] > since
                and r["kind"] in ("file.partial_removed", "file.partial_left")]
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


@pytest.mark.parametrize("client", CLIENTS)
def test_max_size_download_is_refused_or_cut_at_the_limit(broker, place, client):
    big = place / "allowed" / "large.log"
    big.write_bytes(os.urandom(MAX * 3))
    back = place / "local" / f"large-{client[-1]}"
    if client == "sftp":
        result = sftp(broker, "dev-rules", f"get {big} {back}")
    else:
        result = scp(broker, remote("dev-rules", big), str(back), legacy=client == "scp -O")
    assert result.returncode == 1
    assert_denied_line(result, "exceed the limit of 64K")
    assert not back.exists() or back.stat().st_size <= MAX


def test_unrestricted_device_is_relayed_as_before(broker, place):
    src = place / "local" / "anything.exe"
    digest = payload(src, 300_000)
    for client in CLIENTS:
        target = place / "outside" / f"any-{client[-1]}.exe"
        result = scp(broker, str(src), remote("dev-open", target), legacy=client == "scp -O")
        assert result.returncode == 0, result.stderr
        assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
