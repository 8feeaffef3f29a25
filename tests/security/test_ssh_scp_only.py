"""Issue #16, critical: under a grant allowing only scp, `ssh TECH+DEV 'scp -t x; id'` ran `id`.

A channel is scp only when the whole command is a plain scp server invocation; anything else
is an exec and needs the ssh protocol. Every attack below runs the real OpenSSH client against
a real broker and sshd device; each is refused with one line, audited, and where the attack
would have created a marker file on the device, the marker is proven absent."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice
from tests.security.ssh_world import UNLIMITED, audit_rows, wait_for_row

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, device: SshdDevice
           ) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    proc.env.update(UNLIMITED)
    proc.add_approver()
    proc.add_tech("tech")
    proc.add_sshd_device("dev", device)
    proc.grant("tech", "dev", "2h", "--protocols", "scp")
    proc.serve()
    yield proc
    proc.stop()


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """A directory 'on the device' (the sshd runs on this machine as this user), with an
    'evil' scp a technician might have uploaded earlier."""
    evil = tmp_path / "evil"
    evil.mkdir()
    script = evil / "scp"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path}/MARKER\n")
    script.chmod(0o755)
    return tmp_path


ATTACKS = [
    "scp -t {d}/x; touch {m}",
    "scp -t {d}/x;touch {m}",
    "scp -t {d}/x && touch {m}",
    "scp -t {d}/no/such/dir/x || touch {m}",
    "scp -t {d}/x | touch {m}",
    "scp -t {d}/x & touch {m}",
    "scp -t $(touch {m})",
    "scp -t \"$(touch {m})\"",
    "scp -t `touch {m}`",
    "scp -t {d}/x\ntouch {m}",
    "scp -t {d}/x\rtouch {m}",
    "scp -t {d}/x > {m}",
    "scp -t {d}/x 2>{m}",
    "scp -t {d}/a {m}",
    "scp -t -- {d}/a {m}",
    "scp -S {d}/evil/scp -t {d}/x",
    "scp -o ProxyCommand=touch\\ {m} -t {d}/x",
    "{d}/evil/scp -t {d}/x",
    "./evil/scp -t x",
    "/usr/bin/scp -t {d}/x; touch {m}",
    "sh -c 'scp -t {d}/x; touch {m}'",
    "exec scp -t {d}/x",
    "env PATH={d}/evil scp -t {d}/x",
    "PATH={d}/evil scp -t {d}/x",
    "LD_PRELOAD={d}/evil/scp scp -t {d}/x",
    "scp -t {d}/x #; touch {m}",
    "scp -t ${{HOME}}",
    "scp -t {d}/*",
    "scp -t ~root/x",
    "scp -t '{d}/x",
    "scp -f {d}/x -t {d}/y",
    "scp -rt {d}/x\\\ntouch {m}",
    "touch {m}",
]


def run(broker: BrokerProcess, command: str, *options: str, tty: bool = False
        ) -> subprocess.CompletedProcess[str]:
    ssh, *rest = broker.ssh_args("tech+dev", "tech", tty=tty)
    return subprocess.run([ssh, *options, *rest, command], capture_output=True, text=True,
                          input="", timeout=30, errors="replace")


def assert_refused(broker: BrokerProcess, result: subprocess.CompletedProcess[str],
                   command: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("broker: access to dev refused (protocol not allowed)")
    assert result.stdout == ""
    row = wait_for_row(broker, lambda r: r["kind"] == "session.refused"
                       and r["data"].get("command") == command)
    assert row["data"]["reason"] == "protocol not allowed"
    assert row["actor"] == "technician:tech" and row["subject"] == "dev"


@pytest.mark.parametrize("template", ATTACKS)
def test_attack_under_an_scp_only_grant_is_refused_and_audited(broker, place, template):
    marker = place / "MARKER"
    command = template.format(d=place, m=marker)
    result = run(broker, command)
    assert_refused(broker, result, command)
    time.sleep(0.2)
    assert not marker.exists(), f"{command!r} ran on the device"


@pytest.mark.parametrize("command", ["scp -t {d}/x; exec bash -i", "scp -t {d}/x"])
def test_scp_with_a_terminal_is_an_exec_and_refused(broker, place, command):
    command = command.format(d=place)
    result = run(broker, command, tty=True)
    assert result.returncode == 1
    assert "broker: access to dev refused (protocol not allowed)" in result.stderr
    wait_for_row(broker, lambda r: r["kind"] == "session.refused"
                 and r["data"].get("command") == command)
    assert not (place / "x").exists()


def test_environment_tricks_never_reach_the_device(broker, place):
    # A plain scp command, with PATH pointing at an uploaded "scp" and a LANG that is shell
    # text: the broker passes on only well-formed locale variables, so the real scp runs.
    (place / "up").mkdir()
    source = place / "payload.txt"
    source.write_text("payload\n")
    result = subprocess.run(
        ["scp", "-O", "-P", str(broker.port), "-i", str(broker.tech_keys["tech"]),
         "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "BatchMode=yes",
         "-o", f'SetEnv=PATH={place}/evil "LANG=$(touch {place}/MARKER)" LD_PRELOAD=/x',
         str(source), f"tech+dev@127.0.0.1:{place}/up/"],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (place / "up" / "payload.txt").read_text() == "payload\n"
    assert not (place / "MARKER").exists()
    row = wait_for_row(broker, lambda r: r["kind"] == "channel.env_dropped")
    assert set(row["data"]["names"]) >= {"PATH", "LANG", "LD_PRELOAD"}


def scp_opts(broker: BrokerProcess) -> list[str]:
    return ["-O", "-P", str(broker.port), "-i", str(broker.tech_keys["tech"]),
            "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
            "-o", "BatchMode=yes"]


def newest_recording(broker: BrokerProcess, before: set[Path]) -> Path:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        new = [p for p in broker.recordings() if p not in before]
        if new and json.loads((new[0] / "session.json").read_text()).get("ended_at"):
            return new[0]
        time.sleep(0.05)
    raise TimeoutError("no sealed session recording")


def scp_ops(session: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(session.glob("scp-*.jsonl"))
            for line in path.read_text().splitlines()]


@pytest.mark.parametrize("name", ["plain.txt", "with space.txt", "it's here.txt"])
def test_legacy_scp_up_and_down_still_works_and_is_recorded(broker, place, name):
    source = place / name
    source.write_bytes(uuid.uuid4().bytes * 100)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    remote_dir = place / "remote"
    remote_dir.mkdir()
    remote = remote_dir / name
    quoted = '"' + str(remote) + '"'  # scp -O passes the remote path to the remote shell
    before = set(broker.recordings())
    up = subprocess.run(["scp", *scp_opts(broker), str(source), f"tech+dev@127.0.0.1:{quoted}"],
                        capture_output=True, text=True, timeout=30)
    assert up.returncode == 0, up.stderr
    assert remote.read_bytes() == source.read_bytes()
    session = newest_recording(broker, before)
    ops = scp_ops(session)
    assert ops[0]["op"] == "command" and ops[0]["direction"] == "upload"
    assert ops[0]["remote"] == [str(remote)]
    assert ops[0]["command"] == f"scp -t -- {shlex.quote(str(remote))}"  # built by the broker
    assert ops[0]["requested"] == f"scp -t {quoted}"  # as the client sent it
    assert any(op["op"] == "upload" and op["sha256"] == digest and op["result"] == "ok"
               for op in ops)

    back = place / f"back-{name}"
    before = set(broker.recordings())
    # -T: the client cannot match a quoted remote path against the name the device sends
    down = subprocess.run(["scp", *scp_opts(broker), "-T", f"tech+dev@127.0.0.1:{quoted}",
                           str(back)], capture_output=True, text=True, timeout=30)
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == source.read_bytes()
    ops = scp_ops(newest_recording(broker, before))
    assert ops[0]["direction"] == "download" and ops[0]["remote"] == [str(remote)]
    assert any(op["op"] == "download" and op["sha256"] == digest for op in ops)


def test_sftp_still_works_under_an_scp_only_grant(broker, place):
    # OpenSSH 9's scp speaks SFTP: the sftp subsystem serves an scp grant too (unchanged).
    source = place / "modern.txt"
    source.write_text("modern\n")
    up = subprocess.run(["scp", *scp_opts(broker)[1:], str(source),
                         f"tech+dev@127.0.0.1:{place}/modern-copy.txt"],
                        capture_output=True, text=True, timeout=30)
    assert up.returncode == 0, up.stderr
    assert (place / "modern-copy.txt").read_text() == "modern\n"


def test_refusals_leave_rows_that_name_the_command(broker, place):
    command = f"scp -t {place}/x; touch {place}/MARKER"
    run(broker, command)
    rows = [r for r in audit_rows(broker) if r["kind"] == "session.refused"
            and r["data"].get("command") == command]
    assert rows and "only a plain 'scp -t|-f PATH'" in rows[-1]["data"]["detail"]
