"""``broker recordings list|search|show|export|hold|prune`` through the real CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from broker import audit
from broker.config import load_config
from broker.recording import Flusher, SessionRecording, signer_for
from broker.recording.manifest import PRUNED_FILE
from broker.recording.oplog import OpLog
from broker.store.engine import Store
from broker.store.models import AuditEvent, Grant, Session
from tests.conftest import Cli, CliResult

NOW = datetime.now(UTC).replace(microsecond=0)
OLD = datetime(2020, 3, 1, 8, 0, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def record(broker_dir: Path, session_id: str, *, start: datetime = NOW - timedelta(hours=1),
                 tech: str = "alice", vendor: str = "BD", device: str = "pump1",
                 grant: int = 1, seal: bool = True) -> Path:
    """A closed session: a terminal (printed text at +2.5 s, 'reboot' typed at +75.3 s),
    an exec channel and an SFTP upload. Sealed with the broker's recording key."""
    config = load_config(broker_dir / "broker.toml")
    clock, flusher = Clock(), Flusher(interval=3600)
    rec = SessionRecording.create(
        config.recordings_dir, session_id, start,
        {"technician": tech, "vendor": vendor, "device": device, "grant": grant,
         "client": "192.0.2.7:50022", "node": "n1"},
        flusher=flusher, clock=clock, now=lambda: start + timedelta(minutes=10),
        signer=signer_for(config) if seal else None)
    term = rec.terminal(0, width=80, height=24, term="xterm", env={})
    clock.t += 2.5
    term.output(b"\x1b[1mPump firmware V2.7.1\x1b[0m ready\r\n$ ")
    clock.t += 72.8
    for ch in b"reboot\r":
        term.input(bytes([ch]))
        clock.t += 0.2
    exe = rec.exec_log(1, "show alarms")
    clock.t += 4.0
    exe.stdout(b"alarm: occlusion detected\n")
    exe.exit(0)
    sftp = OpLog(rec.add_file("sftp-2", ".jsonl"), flusher=flusher, clock=clock)
    clock.t += 1.0
    sftp.write({"op": "upload", "path": "/upload/Pump-Config.xml", "bytes_written": 12,
                "result": "ok"})
    await rec.close("connection closed")
    await flusher.stop()
    return rec.path


def one_error(result: CliResult, code: int, *words: str) -> None:
    assert result.code == code, result
    assert len(result.err_lines) == 1, result.err
    for word in words:
        assert word in result.err, result.err


# -- search ---------------------------------------------------------------------------------

async def test_search_finds_printed_typed_exec_and_transferred_text(cli: Cli, broker_dir):
    await record(broker_dir, "s1")
    await record(broker_dir, "s2", tech="bob", device="ct1")
    printed = cli("recordings", "search", "firmware v2.7")
    assert printed.code == 0, printed.err
    lines = printed.out.splitlines()
    assert len(lines) == 2  # one per session
    session, offset, who, file, snippet = lines[0].split("  ", 4)
    assert (session, offset, who, file) == ("s1", "+00:02.5", "alice@pump1", "term-0.cast")
    assert "Pump firmware V2.7.1" in snippet and "\x1b" not in snippet
    assert lines[1].startswith("s2  +00:02.5  bob@ct1  term-0.cast  ")

    typed = cli("recordings", "search", "REBOOT", "--json")
    assert typed.code == 0, typed.err
    hits = json.loads(typed.out)
    assert [(h["session"], h["file"], h["stream"]) for h in hits] == [
        ("s1", "term-0.cast", "input"), ("s2", "term-0.cast", "input")]
    assert hits[0]["offset"] == pytest.approx(75.3)
    assert "+01:15.3  alice@pump1  term-0.cast" in cli("recordings", "search", "reboot").out

    exec_hit = cli("recordings", "search", "occlusion").out.splitlines()
    assert exec_hit[0].startswith("s1  +00:04.0  alice@pump1  exec-1.jsonl  ")
    assert "alarm: occlusion detected" in exec_hit[0]
    assert "exec-1.jsonl" in cli("recordings", "search", "show alarms").out

    sftp_hit = cli("recordings", "search", "pump-config").out.splitlines()
    assert len(sftp_hit) == 2 and sftp_hit[0].startswith("s1  +00:01.0  alice@pump1  sftp-2.jsonl")
    assert "upload /upload/Pump-Config.xml" in sftp_hit[0]

    missing = cli("recordings", "search", "no such text anywhere")
    assert missing.code == 0 and missing.out == ""
    one_error(cli("recordings", "search", ""), 2, "TEXT")


# -- list -----------------------------------------------------------------------------------

@pytest.mark.timeout(300)  # some dozens of CLI start-ups on a loaded host
async def test_list_filters_and_sealed_column(cli: Cli, broker_dir):
    await record(broker_dir, "old1", start=NOW - timedelta(days=30), grant=3)
    await record(broker_dir, "new1", start=NOW - timedelta(hours=2), tech="bob", vendor="GE",
                 device="ct1", grant=4)
    await record(broker_dir, "raw1", start=NOW - timedelta(hours=1), seal=False, grant=4)

    def ids(*args: str) -> list[str]:
        result = cli("recordings", "list", *args, "--json")
        assert result.code == 0, result.err
        return [d["id"] for d in json.loads(result.out)]

    assert ids() == ["old1", "new1", "raw1"]
    assert ids("--tech", "bob") == ["new1"]
    assert ids("--vendor", "BD") == ["old1", "raw1"]
    assert ids("--device", "ct1") == ["new1"]
    assert ids("--grant", "4") == ["new1", "raw1"]
    assert ids("--since", "7d") == ["new1", "raw1"]
    assert ids("--until", "7d") == ["old1"]
    iso = (NOW - timedelta(minutes=90)).isoformat()
    assert ids("--since", "40d", "--until", iso) == ["old1", "new1"]
    rows = json.loads(cli("recordings", "list", "--json").out)
    assert [(d["id"], d["sealed"]) for d in rows] == [
        ("old1", True), ("new1", True), ("raw1", False)]
    table = cli("recordings", "list").out.splitlines()
    assert "SEALED" in table[0]
    assert table[3].split()[0] == "raw1" and " no " in table[3]
    one_error(cli("recordings", "list", "--since", "last tuesday"), 2, "--since")
    one_error(cli("recordings", "list", "--until", "2026-01-01T00:00:00"), 2, "--until",
              "timezone")


# -- show and export (with database rows) ---------------------------------------------------

@pytest.fixture
def granted(cli: Cli, broker_dir: Path, ssh_pubkey: Path) -> int:
    """alice, approvers bob and carol, device pump1; a request approved by bob: its grant id."""
    setup = cli.many([
        ("tech", "add", "alice", "--vendor", "BD", "--key", ssh_pubkey),
        ("approver", "add", "bob", "--email", "bob@hospital.example"),
        ("device", "add", "pump1", "--host", "10.0.0.5", "--user", "svc",
         "--password-env", "PUMP_PW")], env={"PUMP_PW": "pw"})
    assert all(r.code == 0 for r in setup), setup
    created = cli("request", "create", "--tech", "alice", "--device", "pump1", "--for", "90m",
                  "--reason", "replace occlusion sensor", "--json")
    assert created.code == 0, created.err
    request_id = json.loads(created.out)["id"]
    approved = cli("request", "approve", str(request_id), "--as", "bob", "--comment",
                   "ok for tonight", "--json")
    assert approved.code == 0, approved.err
    return int(json.loads(approved.out)["grant"])


async def add_session_row(broker_dir: Path, session_id: str, grant_id: int,
                          recording: str) -> None:
    config = load_config(broker_dir / "broker.toml")
    store = Store(config.database_url)
    try:
        async with store.session() as db:
            grant = await db.get(Grant, grant_id)
            assert grant is not None
            db.add(Session(id=session_id, grant_id=grant_id, technician_id=grant.technician_id,
                           device_id=grant.device_id, node="n1", client_addr="192.0.2.7",
                           recording=recording, started_at=NOW, ended_at=NOW,
                           state="closed", end_reason="connection closed"))
            await audit.record(db, NOW, "session.started", "technician:alice",
                               f"session:{session_id}", grant=grant_id)
            await audit.record(db, NOW, "session.started", "technician:alice",
                               "session:someone-else", grant=grant_id + 100)
    finally:
        await store.close()


async def audit_rows(broker_dir: Path, kind: str) -> list[AuditEvent]:
    store = Store(load_config(broker_dir / "broker.toml").database_url)
    try:
        async with store.session() as db:
            return list((await db.exec(select(AuditEvent).where(AuditEvent.kind == kind))).all())
    finally:
        await store.close()


async def test_show_has_verify_state_request_and_approvals(cli: Cli, broker_dir, granted):
    path = await record(broker_dir, "s1", grant=granted)
    await add_session_row(broker_dir, "s1", granted, path.name)
    shown = cli("recordings", "show", "s1", "--json")
    assert shown.code == 0, shown.err
    d = json.loads(shown.out)
    assert d["verified"] is True and d["problems"] == [] and d["in_database"] is True
    assert d["request"]["reason"] == "replace occlusion sensor"
    assert d["request"]["duration_s"] == 5400
    assert [(a["approver"], a["decision"], a["comment"]) for a in d["approvals"]] == [
        ("bob", "approve", "ok for tonight")]
    human = cli("recordings", "show", path.name).out
    assert "verify:" in human and "ok" in human
    assert "replace occlusion sensor" in human and "90m" in human
    assert "bob approve at" in human and "ok for tonight" in human

    (path / "exec-1.jsonl").write_text("{}\n")
    tampered = json.loads(cli("recordings", "show", "s1", "--json").out)
    assert tampered["verified"] is False
    assert any("exec-1.jsonl" in p for p in tampered["problems"])
    assert "exec-1.jsonl" in cli("recordings", "show", "s1").out.split("verify:")[1]
    one_error(cli("recordings", "show", "nope"), 1, "nope")


async def test_show_of_a_recording_without_database_row(cli: Cli, broker_dir):
    await record(broker_dir, "lonely", grant=77)
    d = json.loads(cli("recordings", "show", "lonely", "--json").out)
    assert d["in_database"] is False and d["request"] is None and d["verified"] is True


def run_verify(bundle: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "verify.py"], cwd=bundle, capture_output=True,
                          text=True, check=False, timeout=60)


async def test_export_bundle_is_self_contained_and_verifies(cli: Cli, broker_dir, granted,
                                                            tmp_path):
    path = await record(broker_dir, "s1", grant=granted)
    await add_session_row(broker_dir, "s1", granted, path.name)
    out = tmp_path / "evidence.tar"
    exported = cli("recordings", "export", "s1", "--out", out)
    assert exported.code == 0, exported.err
    assert "exported session s1" in exported.out

    bundle = tmp_path / "bundle"
    with tarfile.open(out) as tar:
        names = tar.getnames()
        tar.extractall(bundle, filter="data")
    assert {f"{path.name}/manifest.json", f"{path.name}/manifest.sig",
            f"{path.name}/term-0.cast", "recording-public-key.pem", "evidence.json",
            "verify.py"} <= set(names)
    assert (bundle / "recording-public-key.pem").read_text() == cli("recordings", "pubkey").out

    evidence = json.loads((bundle / "evidence.json").read_text())
    assert evidence["session"]["id"] == "s1" and evidence["grant"]["id"] == granted
    assert evidence["request"]["reason"] == "replace occlusion sensor"
    assert [(a["approver"], a["decision"]) for a in evidence["approvals"]] == [
        ("bob", "approve")]
    subjects = {row["subject"] for row in evidence["audit"]}
    request_id = evidence["request"]["id"]
    assert {"session:s1", f"grant:{granted}", f"request:{request_id}"} <= subjects
    assert "session:someone-else" not in subjects

    checked = run_verify(bundle)
    assert (checked.returncode, checked.stdout) == (0, "ok\n"), checked.stderr
    # an external auditor runs the file first, with --help or on the wrong directory
    script = str(bundle / "verify.py")
    helped = subprocess.run([sys.executable, script, "--help"], capture_output=True,
                            text=True, check=False, timeout=60)
    assert helped.returncode == 0 and "usage: verify.py [-h] [bundle]" in helped.stdout
    assert "recordings pubkey" in helped.stdout
    wrong = subprocess.run([sys.executable, script, str(tmp_path / "nowhere")],
                           capture_output=True, text=True, check=False, timeout=60)
    assert wrong.returncode == 2 and wrong.stderr.strip().endswith(
        "is not a directory (unpack the bundle's tar first)") and "Traceback" not in wrong.stderr
    empty = subprocess.run([sys.executable, script, str(tmp_path)], capture_output=True,
                           text=True, check=False, timeout=60)
    assert empty.returncode == 1 and "an evidence bundle?" in empty.stdout
    no_crypto = subprocess.run([sys.executable, "-I", "-S", script], capture_output=True,
                               text=True, check=False, timeout=60)  # no site-packages
    assert no_crypto.returncode == 1 and "pip install cryptography" in no_crypto.stderr

    cast = bundle / path.name / "term-0.cast"
    data = bytearray(cast.read_bytes())
    data[-5] ^= 0x01
    cast.write_bytes(bytes(data))
    flipped = run_verify(bundle)
    assert flipped.returncode == 1
    assert "term-0.cast was changed" in flipped.stdout
    cast.write_bytes(bytes(data[:-5]))
    assert "term-0.cast has" in run_verify(bundle).stdout
    (bundle / path.name / "manifest.json").write_bytes(
        (bundle / path.name / "manifest.json").read_bytes().replace(b"alice", b"mallo"))
    assert "signature does not match" in run_verify(bundle).stdout

    rows = await audit_rows(broker_dir, "recording.exported")
    assert [r.subject for r in rows] == ["session:s1"]

    before = out.read_bytes()
    one_error(cli("recordings", "export", "s1", "--out", out), 1, str(out), "exists")
    assert out.read_bytes() == before
    one_error(cli("recordings", "export", "nope", "--out", tmp_path / "x.tar"), 1, "nope")
    assert not (tmp_path / "x.tar").exists()


# -- hold and prune -------------------------------------------------------------------------

@pytest.mark.timeout(300)  # some dozens of CLI start-ups on a loaded host
async def test_prune_respects_retain_days_and_hold_and_keeps_the_chain(cli: Cli, broker_dir):
    old_a = await record(broker_dir, "olda", start=OLD)
    old_b = await record(broker_dir, "oldb", start=OLD + timedelta(hours=1))
    old_c = await record(broker_dir, "oldc", start=OLD + timedelta(hours=2))
    recent = await record(broker_dir, "recent", start=NOW - timedelta(days=2))
    env = {"BROKER_RECORDING_RETAIN_DAYS": "30"}

    held = cli("recordings", "hold", "oldb", "on")
    assert held.code == 0 and "legal hold on" in held.out, held.err
    assert json.loads(cli("recordings", "show", "oldb", "--json").out)["hold"] is True
    one_error(cli("recordings", "hold", "nope", "on"), 1, "nope")
    assert cli("recordings", "hold", "oldb", "maybe").code == 2

    dry = cli("recordings", "prune", "--dry-run", env=env)
    assert dry.code == 0, dry.err
    assert dry.out.splitlines() == ["would delete olda", "would delete oldc",
                                    "kept oldb (legal hold)"]
    assert old_a.is_dir() and old_c.is_dir()

    pruned = cli("recordings", "prune", "--json", env=env)
    assert pruned.code == 0, pruned.err
    assert json.loads(pruned.out)["deleted"] == ["olda", "oldc"]
    assert not old_a.exists() and not old_c.exists()
    assert old_b.is_dir() and recent.is_dir()
    verified = cli("recordings", "verify", "--all")
    assert verified.code == 0 and re.fullmatch(
        r"ok: 2 sessions, [0-9.]+ (bytes|KB), chain intact\n", verified.out), verified

    # The default retention (2555 days) keeps a six-year-old session.
    assert cli("recordings", "prune").out.strip() == "nothing older than 2555 days"
    assert old_b.is_dir()

    released = cli("recordings", "hold", "oldb", "off")
    assert released.code == 0 and "legal hold off" in released.out
    again = cli("recordings", "prune", env=env)
    assert again.out.splitlines() == ["deleted oldb"]
    assert not old_b.exists() and recent.is_dir()
    assert cli("recordings", "verify", "--all").code == 0

    kinds = {kind: await audit_rows(broker_dir, kind)
             for kind in ("recording.hold", "recording.pruned")}
    assert [json.loads(r.data)["hold"] for r in kinds["recording.hold"]] == [True, False]
    assert [json.loads(r.data)["deleted"] for r in kinds["recording.pruned"]] == [
        ["olda", "oldc"], ["oldb"]]

    # The signed list of pruned sessions is what keeps the chain intact.
    root = recent.parent
    listed = json.loads((root / PRUNED_FILE).read_text())
    listed["sessions"]["recent"] = "0" * 64
    (root / PRUNED_FILE).write_text(json.dumps(listed))
    broken = cli("recordings", "verify", "--all")
    assert broken.code == 1 and "signature does not match" in broken.out
    (root / PRUNED_FILE).unlink()
    assert "chain broken" in cli("recordings", "verify", "--all").out


def test_search_streams_long_channels_with_hits_across_events(tmp_path):
    from broker.recording.search import search

    directory = tmp_path / "20261124T093012Z-long"
    directory.mkdir()
    (directory / "session.json").write_text(json.dumps(
        {"session": "long", "technician": "alice", "device": "pump1"}))
    events = [json.dumps({"version": 2, "width": 80, "height": 24})]
    t = 0.0
    for i in range(5000):  # filler, then the needle split over three events, twice
        t += 0.01
        events.append(json.dumps([round(t, 3), "o", f"line {i} of noise\r\n"]))
        if i in (1000, 4000):
            events += [json.dumps([round(t + 0.001, 3), "o", part])
                       for part in ("...NEE", "dl", "e!")]
    (directory / "term-0.cast").write_text("\n".join(events) + "\n[12.5, \"o\", \"cut")
    hits = list(search(tmp_path, "needle"))
    assert [round(h.offset, 3) for h in hits] == [10.011, 40.011]
    assert all(h.snippet.endswith("...NEEdle!") for h in hits)
