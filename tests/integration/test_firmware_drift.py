"""Firmware drift end to end: a real sshd device whose firmware file the technician changes
during a real `ssh` session (as a vendor would). The broker probes before and after with its
own login, records both on the session row, in the recording and in the trust record, audits
the change, mails the approvers (real aiosmtpd), `device show` shows the drift until
`device firmware accept` clears it. Failing probes (exit 1, a hang past the timeout) never
touch the session; a session cut by a revoke is still probed afterwards, without delaying the
cut; a broker stopping with a live session probes it before it exits."""

from __future__ import annotations

import asyncio
import getpass
import json
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from broker.revocation.registry import LiveSessions
from broker.services import firmware
from broker.services.device_web import WebOptions, configure
from broker.services.directory import Directory
from broker.services.firmware_probe import run_probe, settle
from broker.services.grants import Grants
from broker.store.models import Device, Grant, Session
from tests.approval_kit import Mailbox, body_text, set_config, smtp_server
from tests.integration.harness import BrokerProcess, SshdDevice
from tests.unit.webproxy_kit import recording_app, sign_in, upstream
from tests.web_kit import device_origin

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]  # loaded hosts are slow

PROBE_WAIT = 60  # seconds: two probes of up to 10 s each, on a loaded CI host


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with smtp_server() as server:
        yield server


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sshd_device: SshdDevice,
          mailbox: tuple[Mailbox, int]) -> Iterator[BrokerProcess]:
    proc = BrokerProcess(tmp_path_factory.mktemp("broker")).init()
    set_config(proc.root, "notify", smtp_host="127.0.0.1", smtp_port=mailbox[1],
               mail_from="broker@hospital.example")
    proc.add_approver()
    proc.add_tech("tech")
    proc.serve()
    try:
        yield proc
    finally:
        proc.stop()


def firmware_file(device: SshdDevice, name: str, text: str) -> Path:
    path = device.root / f"{name}-firmware-version"
    path.write_text(text)
    return path


def query(proc: BrokerProcess, sql: str, *params: object) -> list[dict[str, Any]]:
    """Read the broker's database directly (polling through the CLI is slow on a busy host)."""
    db = sqlite3.connect(proc.root / "data" / "broker.db", timeout=30)
    try:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(sql, params)]
    finally:
        db.close()


def history(proc: BrokerProcess, device: str) -> list[dict[str, Any]]:
    """The device's probe readings, newest first (as `device firmware history` lists them)."""
    rows = query(proc, "SELECT r.* FROM firmware_reading r JOIN device d ON d.id = r.device_id"
                       " WHERE d.name = ? ORDER BY r.id DESC", device)
    return [{**r, "session": r["session_id"], "changed": bool(r["changed"]),
             "text": r["value"] if r["value"] is not None else f"probe failed: {r['error']}"}
            for r in rows]


def wait_for_readings(proc: BrokerProcess, device: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + PROBE_WAIT
    while time.monotonic() < deadline:
        lines = history(proc, device)
        if len(lines) >= count:
            return lines
        time.sleep(0.3)
    raise AssertionError(f"{device}: fewer than {count} probe readings within {PROBE_WAIT} s:"
                         f" {history(proc, device)}")


def audit(proc: BrokerProcess, kind: str, subject: str | None = None) -> list[dict[str, Any]]:
    rows = query(proc, "SELECT * FROM audit_event WHERE kind = ? ORDER BY seq", kind)
    return [{**r, "data": json.loads(r["data"])} for r in rows
            if subject is None or r["subject"] == subject]


def session_row(proc: BrokerProcess, session_id: str) -> dict[str, Any]:
    (row,) = query(proc, "SELECT * FROM session WHERE id = ?", session_id)
    return row


def stamp(event: dict[str, Any]) -> float:
    return moment(event["ts"]).timestamp()


def moment(text: str) -> datetime:
    """A timestamp as SQLite holds it (UTC, naive) or as JSON shows it (with an offset)."""
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def wait_for_mail(box: Mailbox, subject: str) -> str:
    deadline = time.monotonic() + PROBE_WAIT
    while time.monotonic() < deadline:
        for message in box.to("approver@hospital.example"):
            if message["Subject"] == subject:
                return body_text(message)
        time.sleep(0.2)
    raise AssertionError(f"no mail {subject!r} within {PROBE_WAIT} s")


def test_a_firmware_change_during_a_session_is_drift_until_accepted(
        world: BrokerProcess, sshd_device: SshdDevice, mailbox: tuple[Mailbox, int]) -> None:
    proc = world
    fw = firmware_file(sshd_device, "pump", "PumpOS 1.0\n")
    proc.add_sshd_device("pump", sshd_device, "--firmware", "PumpOS 1.0",
                         "--probe", f"cat {fw}")
    shown = proc.cli_json("device", "show", "pump")
    assert isinstance(shown, dict)
    assert (shown["probe"], shown["firmware_drift"]) == (f"cat {fw}", False)
    proc.grant("tech", "pump")
    # the vendor installs new firmware; the before-probe runs concurrently with the
    # session's start, so the change comes a moment later (as a real update would)
    result = proc.ssh("tech+pump", f"sleep 2; printf 'PumpOS 2.0\\n' > {fw}; echo installed")
    assert (result.code, result.out.strip()) == (0, "installed"), result.err
    lines = wait_for_readings(proc, "pump", 2)
    assert [(x["phase"], x["text"], x["changed"]) for x in lines] == [
        ("after", "PumpOS 2.0", True), ("before", "PumpOS 1.0", False)]
    session_id = lines[0]["session"]
    row = session_row(proc, session_id)
    assert (row["probe_before"], row["probe_after"]) == ("PumpOS 1.0", "PumpOS 2.0")
    # the recording carries both readings, and still verifies
    (recording,) = [p for p in proc.recordings() if p.name.endswith(session_id)]
    marks = [json.loads(x) for x in (recording / "firmware-probe.jsonl").read_text().splitlines()]
    assert [(m["phase"], m["output"], m["error"]) for m in marks] == [
        ("before", "PumpOS 1.0", None), ("after", "PumpOS 2.0", None)]
    assert all(m["command"] == f"cat {fw}" for m in marks)
    verified = proc.cli("recordings", "verify", session_id, check=False)
    assert verified.code == 0, verified.out + verified.err
    # audited, with before and after, and mailed to the approvers
    (changed,) = audit(proc, "device.firmware_changed", "pump")
    assert {k: changed["data"][k] for k in ("before", "after", "baseline", "phase",
                                            "session_id")} == {
        "before": "PumpOS 1.0", "after": "PumpOS 2.0", "baseline": "PumpOS 1.0",
        "phase": "after", "session_id": session_id}
    mail = wait_for_mail(mailbox[0], "Firmware changed on pump")
    assert "Expected:  PumpOS 1.0" in mail and "Reported:  PumpOS 2.0" in mail
    assert "broker device firmware accept pump" in mail


def test_device_show_shows_the_drift_until_an_admin_accepts_it(
        world: BrokerProcess, sshd_device: SshdDevice) -> None:
    proc = world
    # updated while nobody watched: the next session's before-probe sees it
    fw = firmware_file(sshd_device, "monitor", "MON 5.1\n")
    proc.add_sshd_device("monitor", sshd_device, "--firmware", "MON 5.0",
                         "--probe", f"cat {fw}")
    proc.grant("tech", "monitor")
    assert proc.ssh("tech+monitor", "true").code == 0
    lines = wait_for_readings(proc, "monitor", 2)
    assert [(x["phase"], x["text"], x["changed"]) for x in lines] == [
        ("after", "MON 5.1", False), ("before", "MON 5.1", True)]
    (changed,) = audit(proc, "device.firmware_changed", "monitor")
    assert (changed["data"]["phase"], changed["data"]["before"]) == ("before", "MON 5.0")
    # the trust record keeps the baseline and shows the drift
    shown = proc.cli_json("device", "show", "monitor")
    assert isinstance(shown, dict)
    assert (shown["firmware"], shown["firmware_observed"], shown["firmware_drift"]) == (
        "MON 5.0", "MON 5.1", True)
    assert shown["firmware_history"][0]["text"] == "MON 5.1"
    text = proc.cli("device", "show", "monitor").out
    assert "firmware drift: CHANGED: the device reported 'MON 5.1'" in text
    assert "not accepted yet: broker device firmware accept monitor" in text
    # an admin accepts it, on purpose and audited
    accepted = proc.cli("device", "firmware", "accept", "monitor")
    assert "firmware baseline is now 'MON 5.1'" in accepted.out
    shown = proc.cli_json("device", "show", "monitor")
    assert isinstance(shown, dict)
    assert (shown["firmware"], shown["firmware_drift"]) == ("MON 5.1", False)
    (event,) = audit(proc, "device.firmware_accepted", "monitor")
    assert event["data"] == {"previous": "MON 5.0", "accepted": "MON 5.1"}
    again = proc.cli("device", "firmware", "accept", "monitor", check=False)
    assert again.code == 1
    assert again.err.strip() == ("broker: device 'monitor' has no firmware change to accept"
                                 " (baseline: MON 5.1)")
    listed = proc.cli_json("device", "firmware", "history", "monitor", "--limit", "1")
    assert isinstance(listed, list)
    assert [(x["phase"], x["text"], x["actor"]) for x in listed] == [
        ("accepted", "MON 5.1", f"cli:{getpass.getuser()}")]


@pytest.mark.parametrize(("probe", "reason"), [
    ("cat /nonexistent/firmware-version", "probe failed: exit status 1 (cat: /nonexistent/"),
    ("sleep 60", "probe failed: no answer within 10 s"),
])
def test_a_failing_probe_never_touches_the_session(
        world: BrokerProcess, sshd_device: SshdDevice, probe: str, reason: str) -> None:
    proc = world
    name = "hang" if probe.startswith("sleep") else "broken"
    proc.add_sshd_device(name, sshd_device, "--probe", probe)
    proc.grant("tech", name)
    started = time.monotonic()
    result = proc.ssh(f"tech+{name}", "echo", "still-working")
    took = time.monotonic() - started
    assert (result.code, result.out.strip()) == (0, "still-working"), result.err
    assert took < 8, f"the session took {took:.1f} s: the probe held it up"
    lines = wait_for_readings(proc, name, 2)
    assert {x["phase"] for x in lines} == {"before", "after"}
    assert all(x["text"].startswith(reason) for x in lines), lines
    row = session_row(proc, lines[0]["session"])
    assert row["probe_before"].startswith(reason) and row["probe_after"].startswith(reason)
    assert row["end_reason"] == "connection closed"
    failures = audit(proc, "device.probe_failed", name)
    assert sorted(e["data"]["phase"] for e in failures) == ["after", "before"]
    shown = proc.cli_json("device", "show", name)
    assert isinstance(shown, dict)
    assert (shown["firmware"], shown["firmware_drift"]) == (None, False)


def test_a_cut_session_is_probed_afterwards_without_delaying_the_cut(
        world: BrokerProcess, sshd_device: SshdDevice) -> None:
    proc = world
    fw = firmware_file(sshd_device, "xray", "XR 7\n")
    proc.add_sshd_device("xray", sshd_device, "--probe", f"sleep 3; cat {fw}")
    grant = proc.grant("tech", "xray")
    client = proc.popen_ssh("tech+xray", "sleep 120")
    try:
        wait_for_readings(proc, "xray", 1)  # the before-probe
        fw.write_text("XR 8\n")  # changed while the session runs
        proc.cli("grant", "revoke", str(grant), "--reason", "done for today")
        client.wait(timeout=15)
    finally:
        if client.poll() is None:
            client.kill()
    # the cut does not wait for the after-probe (which takes over 3 s here)
    (revoked,) = [e for e in audit(proc, "grant.revoked") if e["subject"] == f"grant:{grant}"]
    ended = [e for e in audit(proc, "session.ended")
             if f"grant {grant} was revoked" in e["data"]["reason"]]
    cut = stamp(ended[0]) - stamp(revoked)
    assert cut < 1.5, f"the session ended {cut:.1f} s after the revoke"
    lines = wait_for_readings(proc, "xray", 2)
    assert [(x["phase"], x["text"]) for x in lines] == [("after", "XR 8"), ("before", "XR 7")]
    # probed after the session ended (the probe sleeps 3 s)
    assert (moment(lines[0]["at"]) - moment(ended[0]["ts"])).total_seconds() > 2.5
    row = session_row(proc, lines[0]["session"])
    assert row["end_reason"].startswith("access ended")
    assert row["ended_at"] is not None
    shown = proc.cli_json("device", "show", "xray")
    assert isinstance(shown, dict)
    assert (shown["firmware"], shown["firmware_observed"]) == ("XR 7", "XR 8")


def test_bad_probe_values_are_one_clear_line(world: BrokerProcess,
                                              sshd_device: SshdDevice) -> None:
    proc = world
    for probe, message in (
            ("", "--probe: must not be empty"),
            ("cat /etc/fw\nreboot", "--probe: contains a control character U+000A (line feed)"),
            ("x" * 600, "--probe: is longer than 500 characters (600 given)")):
        result = proc.cli("device", "add", "badprobe", "--host", "127.0.0.1", "--port",
                          str(sshd_device.port), "--user", sshd_device.user, "--key",
                          str(sshd_device.login_key), "--probe", probe, check=False)
        assert result.code == 2, result.err
        (line,) = result.err.strip().splitlines()
        assert message in line and "Traceback" not in result.err
    assert query(proc, "SELECT id FROM device WHERE name = 'badprobe'") == []
    refused = [e for e in audit(proc, "input.refused") if e["subject"] == "badprobe"]
    assert [e["data"]["field"] for e in refused] == ["probe"] * 3
    proc.add_sshd_device("later", sshd_device)
    for args, message in ((["--probe", "a", "--no-probe"], "give exactly one of"),
                          (["--probe", "cat\x1b[2J"], "--probe: contains a control character")):
        result = proc.cli("device", "set", "later", *args, check=False)
        assert result.code == 2 and message in result.err, result.err
        assert len(result.err.strip().splitlines()) == 1
    assert "probe 'uname -r'" in proc.cli("device", "set", "later", "--probe", "uname -r").out
    assert proc.cli_json("device", "set", "later", "--no-probe")["probe"] is None  # type: ignore[index]


def test_a_broker_stopping_probes_its_last_sessions_first(
        tmp_path: Path, sshd_device: SshdDevice) -> None:
    proc = BrokerProcess(tmp_path / "broker").init()
    proc.env["BROKER_BROKER_DRAIN_TIMEOUT"] = "1s"  # then the session is cut
    proc.add_approver()
    proc.add_tech("tech")
    fw = firmware_file(sshd_device, "lab", "LAB 1\n")
    proc.add_sshd_device("lab", sshd_device, "--probe", f"cat {fw}")
    proc.grant("tech", "lab")
    proc.serve()
    client: subprocess.Popen[str] | None = None
    try:
        client = proc.popen_ssh("tech+lab", "sleep 120")
        wait_for_readings(proc, "lab", 1)  # the before-probe: the session is up
        fw.write_text("LAB 2\n")
    finally:
        proc.stop()  # drains: cuts the session, probes it, then exits
        if client is not None:
            client.kill()
            client.wait()
    assert proc.proc is not None and proc.proc.returncode == 0, proc.serve_log()
    lines = history(proc, "lab")
    assert [(x["phase"], x["text"]) for x in lines] == [("after", "LAB 2"), ("before", "LAB 1")]


async def test_a_device_web_session_is_probed_before_and_after(
        broker_dir: Path, sshd_device: SshdDevice) -> None:
    """The web proxy's sessions too: probed with the broker's own SSH login, the after-probe
    once a revoke has cut the session (in process: the portal's device origin)."""
    fw = firmware_file(sshd_device, "webpump", "WP 3\n")
    sessions = LiveSessions()
    async with upstream(recording_app) as device, \
            device_origin(broker_dir, sessions=sessions) as (client, ctx):
        directory = Directory(ctx, "test")
        key = asyncssh.read_private_key(str(sshd_device.login_key)).export_private_key()
        await directory.add_technician("tech", "Acme Medical", [
            asyncssh.generate_private_key("ssh-ed25519").convert_to_public()])
        added = await directory.add_device(Device(
            name="webpump", host="127.0.0.1", port=sshd_device.port,
            login_user=sshd_device.user, web_url=device.url, firmware="WP 3",
            probe=f"cat {fw}"), "key", key)
        await configure(ctx, "test", "webpump", WebOptions(insecure_http=True, auth="none"))
        tech = (await directory.technician("tech")).technician
        now = ctx.now()
        async with ctx.store.session() as db:
            grant = Grant(technician_id=tech.id or 0, device_id=added.id or 0,
                          protocols=["web"], start=now - timedelta(minutes=1),
                          end=now + timedelta(hours=1), state="active", created_at=now)
            db.add(grant)
            await db.flush()
            grant_id = grant.id or 0
        await sign_in(client, ctx, device="webpump")
        lines = await until(lambda: firmware.history(ctx, "webpump"), 1)
        assert [(x.phase, x.text) for x in lines] == [("before", "WP 3")]
        fw.write_text("WP 4\n")
        await Grants(ctx, "test").revoke(grant_id, "done")
        assert await sessions.recheck() == 1  # what the change feed does on grant.revoked
        lines = await until(lambda: firmware.history(ctx, "webpump"), 2)
        assert [(x.phase, x.text, x.changed) for x in lines] == [
            ("after", "WP 4", True), ("before", "WP 3", False)]
        row = await Directory(ctx, "test").device("webpump")
        assert (row.firmware, row.firmware_observed) == ("WP 3", "WP 4")
        async with ctx.store.session() as db:
            session = await db.get(Session, lines[0].session or "")
        assert session is not None
        assert (session.probe_before, session.probe_after) == ("WP 3", "WP 4")
        await settle(30)
    recording = next(p for p in (broker_dir / "recordings").iterdir()
                     if p.name.endswith(lines[0].session or "?"))
    marks = (recording / "firmware-probe.jsonl").read_text().splitlines()
    assert [json.loads(m)["phase"] for m in marks] == ["before", "after"]
    assert (recording / "manifest.sig").exists()  # sealed after the after-probe


async def until(read: Callable[[], Awaitable[list[Any]]], count: int) -> list[Any]:
    deadline = time.monotonic() + PROBE_WAIT
    while time.monotonic() < deadline:
        found = await read()
        if len(found) >= count:
            return found
        await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {count} within {PROBE_WAIT} s: {await read()}")


@pytest.mark.parametrize(("command", "text"), [
    ("printf 'FW 9\\r\\n\\r\\n'", "FW 9"),
    ("head -c 5000 /dev/zero | tr '\\0' x", "probe failed: output longer than 4096 bytes"),
    ("echo nope >&2; exit 3", "probe failed: exit status 3 (nope)"),
    ("true", "probe failed: the probe printed nothing"),
    ("sleep 30", "probe failed: no answer within 2 s"),
])
async def test_run_probe_against_a_real_sshd(sshd_device: SshdDevice, command: str,
                                             text: str) -> None:
    async with asyncssh.connect(
            "127.0.0.1", sshd_device.port, username=sshd_device.user, known_hosts=None,
            client_keys=[str(sshd_device.login_key)], agent_path=None, config=None) as conn:
        started = time.monotonic()
        reading = await run_probe(conn, command, timeout=2.0 if "sleep" in command else 20)
        assert reading.text == text
        assert time.monotonic() - started < 20  # a hang is cut at the timeout
        # the connection stays usable after a failed probe
        assert (await run_probe(conn, "echo ok")).text == "ok"
