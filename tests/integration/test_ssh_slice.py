"""The walking skeleton end to end: stock `ssh` -> `broker serve` -> real `sshd` device."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tests.integration.harness import BrokerProcess, SshdDevice


@pytest.fixture
def names(request: pytest.FixtureRequest) -> tuple[str, str]:
    """A fresh technician and device name per test, so tests don't share grants."""
    suffix = uuid.uuid4().hex[:6]
    return f"tech-{suffix}", f"dev-{suffix}"


@pytest.fixture
def tech_device(broker: BrokerProcess, sshd_device: SshdDevice,
                names: tuple[str, str]) -> tuple[str, str]:
    tech, device = names
    broker.add_tech(tech)
    broker.add_sshd_device(device, sshd_device)
    return tech, device


def test_exec_relays_output_stderr_and_exit_status(broker, tech_device):
    tech, device = tech_device
    broker.grant(tech, device)
    result = broker.ssh(f"{tech}+{device}", "echo to-stdout; echo to-stderr >&2; exit 7")
    assert result.code == 7
    assert result.out == "to-stdout\n"
    assert "to-stderr" in result.err


def test_interactive_shell_is_relayed_and_recorded_as_asciicast(broker, tech_device):
    tech, device = tech_device
    grant = broker.grant(tech, device)
    marker = uuid.uuid4().hex
    before = set(broker.recordings())
    result = broker.ssh(f"{tech}+{device}", tty=True,
                        input=f"echo shell-{marker}\nexit 0\n")
    assert result.code == 0, result.err
    assert f"shell-{marker}" in result.out
    assert f"connected to {device}" in result.out and "recorded" in result.out
    new = [p for p in broker.recordings() if p not in before]
    assert len(new) == 1
    casts = list(new[0].glob("term-*.cast"))
    assert len(casts) == 1
    lines = casts[0].read_text().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] > 0 and header["height"] > 0
    events = [json.loads(line) for line in lines[1:]]
    assert all(isinstance(e[0], float) and e[1] in ("o", "i", "r") for e in events)
    assert any(e[1] == "i" and "echo" in e[2] for e in events) or any(
        e[1] == "i" for e in events)
    output = "".join(e[2] for e in events if e[1] == "o")
    assert f"shell-{marker}" in output
    meta = _wait_for_sealed(new[0] / "session.json")
    assert meta["technician"] == tech and meta["device"] == device and meta["grant"] == grant
    assert meta["end_reason"] == "connection closed"


def _wait_for_sealed(path, timeout: float = 5.0) -> dict:
    """session.json is rewritten with ended_at once the broker has seen the disconnect."""
    deadline = time.monotonic() + timeout
    while True:
        meta = json.loads(path.read_text())
        if meta.get("ended_at") or time.monotonic() > deadline:
            return meta
        time.sleep(0.05)


def test_recording_plays_in_stock_asciinema(broker, tech_device):
    import shutil
    import subprocess

    if shutil.which("asciinema") is None:
        pytest.skip("asciinema is not installed")
    tech, device = tech_device
    broker.grant(tech, device)
    marker = uuid.uuid4().hex
    before = set(broker.recordings())
    broker.ssh(f"{tech}+{device}", tty=True, input=f"echo cast-{marker}\nexit\n")
    (new,) = [p for p in broker.recordings() if p not in before]
    (cast,) = new.glob("term-*.cast")
    played = subprocess.run(["script", "-qec", f"asciinema cat {cast}", "/dev/null"],
                            capture_output=True, text=True, timeout=30)
    assert f"cast-{marker}" in played.stdout


def test_no_grant_is_refused_with_one_line(broker, tech_device):
    tech, device = tech_device
    result = broker.ssh(f"{tech}+{device}", "true")
    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1
    assert "refused (no grant)" in lines[0] and f"request {device}" in lines[0]


def test_grant_not_yet_started_is_refused(broker, tech_device):
    tech, device = tech_device
    start = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    broker.grant(tech, device, "1h", "--start", start)
    result = broker.ssh(f"{tech}+{device}", "true")
    assert result.code == 1
    assert "refused (not yet started)" in result.err and "opens at" in result.err


def test_expired_grant_is_refused(broker, tech_device):
    tech, device = tech_device
    broker.grant(tech, device, "2s")
    time.sleep(2.5)
    result = broker.ssh(f"{tech}+{device}", "true")
    assert result.code == 1
    assert "refused (expired)" in result.err


def test_revoked_grant_is_refused(broker, tech_device):
    tech, device = tech_device
    grant = broker.grant(tech, device)
    broker.cli("grant", "revoke", str(grant), "--reason", "test")
    result = broker.ssh(f"{tech}+{device}", "true")
    assert result.code == 1
    assert "refused (revoked)" in result.err


def test_protocol_not_in_grant_is_refused(broker, tech_device):
    tech, device = tech_device
    broker.grant(tech, device, "10m", "--protocols", "sftp")
    result = broker.ssh(f"{tech}+{device}", "true")
    assert result.code == 1
    assert "refused (protocol not allowed)" in result.err and "sftp" in result.err


@pytest.mark.parametrize(("action", "reason"), [
    (("device", "retire"), "device retired"),
    (("device", "maintenance", "{device}", "on"), "device in maintenance"),
    (("tech", "disable"), "technician disabled"),
])
def test_lifecycle_refusals(broker, tech_device, action, reason):
    tech, device = tech_device
    broker.grant(tech, device)
    args = [a.format(device=device) for a in action]
    if len(args) == 2:
        args.append(device if args[0] == "device" else tech)
    broker.cli(*args)
    result = broker.ssh(f"{tech}+{device}", "true")
    assert result.code == 1
    assert f"refused ({reason})" in result.err


def test_unknown_device_is_refused(broker, tech_device):
    tech, _ = tech_device
    result = broker.ssh(f"{tech}+no-such-device", "true")
    assert result.code == 1
    assert "no device named 'no-such-device'" in result.err


def test_session_is_closed_at_grant_end_with_a_notice(broker, tech_device):
    tech, device = tech_device
    broker.grant(tech, device, "4s")
    started = time.monotonic()
    result = broker.ssh(f"{tech}+{device}", "sleep 60", timeout=30)
    elapsed = time.monotonic() - started
    assert result.code == 1
    assert "window closed" in result.err
    assert elapsed < 6.5, f"session lived {elapsed:.1f}s past a 4s grant"


def test_revoke_cuts_a_live_session_within_a_second(broker, tech_device):
    tech, device = tech_device
    grant = broker.grant(tech, device)
    proc = broker.popen_ssh(f"{tech}+{device}", "sleep 60")
    try:
        _wait_for_live_session(broker, grant)
        broker.cli("grant", "revoke", str(grant), "--reason", "security incident")
        revoked = time.monotonic()
        proc.wait(timeout=10)
        cut_after = time.monotonic() - revoked
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "revoked" in proc.stderr.read()
    assert cut_after <= 1.0, f"session cut {cut_after:.2f}s after revoke"


def _wait_for_live_session(broker: BrokerProcess, grant: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        tail = broker.cli("audit", "tail", "-n", "5", "--json").out
        if any(e["kind"] == "session.started" and e["data"].get("grant") == grant
               for e in json.loads(tail)):
            return
        time.sleep(0.1)
    raise TimeoutError("the session never started")


def test_technician_menu_lists_grants(broker, tech_device):
    tech, device = tech_device
    grant = broker.grant(tech, device)
    result = broker.ssh(tech)
    assert result.code == 0
    assert f"grant {grant}" in result.out and device in result.out


@pytest.mark.parametrize("user", ["alice+", "+dev", "a+b+c", "x" * 300, "tëch+dev",
                                  "bad name+dev", "_x+dev"])
def test_bad_user_names_get_one_clear_line(broker, tech_device, user):
    tech, _ = tech_device
    args = broker.ssh_args(user, tech)
    args[args.index("LogLevel=ERROR")] = "LogLevel=INFO"
    import subprocess

    run = subprocess.run([*args, "true"], capture_output=True, text=True, errors="replace",
                         timeout=30)
    assert run.returncode == 255
    assert "broker:" in run.stderr and "Permission denied" in run.stderr
    assert "Traceback" not in broker.serve_log()


def test_wrong_key_is_refused_and_audited(broker, tech_device, names):
    tech, device = tech_device
    other = f"{tech}x"
    broker.add_tech(other)
    broker.grant(tech, device)
    run = broker.ssh(f"{tech}+{device}", "true", tech=other)
    assert run.code == 255 and "Permission denied" in run.err
    tail = json.loads(broker.cli("audit", "tail", "-n", "20", "--json").out)
    assert any(e["kind"] == "login.failed" and e["subject"] == f"{tech}+{device}"
               for e in tail)


def test_audit_chain_verifies_after_sessions(broker, tech_device):
    tech, device = tech_device
    broker.grant(tech, device)
    broker.ssh(f"{tech}+{device}", "true")
    result = broker.cli("audit", "verify")
    assert result.out.startswith("ok:")


def test_in_band_request_and_wait_for_approval(broker, tech_device):
    tech, device = tech_device
    proc = broker.popen_ssh(tech, "request", device, "--for", "30m", "--reason",
                            "'replace sensor'", "--wait")
    try:
        deadline = time.monotonic() + 15
        pending = []
        while not pending and time.monotonic() < deadline:
            pending = [r for r in broker.cli_json("request", "list", "--state", "pending")
                       if r["technician"] == tech]
            time.sleep(0.2)
        assert pending and pending[0]["reason"] == "replace sensor"
        broker.cli("request", "approve", str(pending[0]["id"]), "--as", "approver")
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert f"request {pending[0]['id']} approved" in out
    assert f"{tech}+{device}" in out
    assert broker.ssh(f"{tech}+{device}", "true").code == 0


def test_in_band_request_bad_arguments(broker, tech_device):
    tech, device = tech_device
    result = broker.ssh(tech, "request", device, "--for", "2x", "--reason", "r")
    assert result.code == 2
    assert result.err.count("\n") == 1 and "2x" in result.err
    result = broker.ssh(tech, "request", "no-such-device", "--for", "1h", "--reason", "r")
    assert result.code == 1 and "no device named" in result.err
