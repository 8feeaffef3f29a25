"""Signed, chained session manifests: sealing at close and at recovery, verification, CLI."""

from __future__ import annotations

import base64
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from broker.config import load_config
from broker.recording import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    Flusher,
    SessionRecording,
    Signer,
    seal_directory,
    seal_interrupted,
    verify_all,
    verify_session,
)
from broker.recording.manifest import BAD_SIGNATURE, canonical
from broker.recording.oplog import OpLog

T0 = datetime(2026, 11, 24, 9, 30, 12, tzinfo=UTC)
METADATA = {"technician": "alice", "vendor": "acme", "device": "pump-7", "grant": 12,
            "client": "192.0.2.7:50022", "node": "n1"}
CHAIN_BROKEN = "is missing or its manifest changed (chain broken)"


@pytest.fixture
async def flusher():
    f = Flusher(interval=3600)
    yield f
    await f.stop()


@pytest.fixture
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


async def record(root: Path, session_id: str, signer: Signer | None, flusher: Flusher, *,
                 start: datetime = T0, close: bool = True) -> SessionRecording:
    """A session with a terminal channel and an exec channel, closed (and so sealed)."""
    rec = SessionRecording.create(root, session_id, start, dict(METADATA), flusher=flusher,
                                  signer=signer)
    term = rec.terminal(0, width=80, height=24, term="xterm", env={})
    term.output(b"login: alice\r\n$ ")
    term.input(b"reboot\r")
    exe = rec.exec_log(1, "status")
    exe.stdout(b"device: pump-7\n")
    exe.exit(0)
    if close:
        await rec.close("connection closed")
    return rec


def manifest_of(path: Path) -> dict:
    return json.loads((path / MANIFEST_FILE).read_bytes())


async def test_close_seals_the_session_and_it_verifies(tmp_path, flusher, signer):
    rec = await record(tmp_path, "s1", signer, flusher)
    raw = (rec.path / MANIFEST_FILE).read_bytes()
    manifest = json.loads(raw)
    assert raw == canonical(manifest)  # canonical bytes: what the signature covers
    assert manifest["version"] == 1
    assert manifest["session"] == "s1"
    assert manifest["sealed_by"] == "close"
    assert manifest["previous"] == {"session": None, "manifest_sha256": None}
    assert manifest["metadata"] == json.loads((rec.path / "session.json").read_text())
    assert manifest["metadata"]["end_reason"] == "connection closed"
    names = [f["name"] for f in manifest["files"]]
    assert names == ["exec-1.jsonl", "session.json", "term-0.cast"]
    for entry in manifest["files"]:
        data = (rec.path / entry["name"]).read_bytes()
        assert entry["size"] == len(data)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    signature = base64.b64decode((rec.path / SIGNATURE_FILE).read_text())
    signer.public_key.verify(signature, raw)  # raises if wrong
    assert verify_session(rec.path, signer.public_key) == []


async def test_without_a_signer_nothing_is_sealed(tmp_path, flusher, signer):
    rec = await record(tmp_path, "s1", None, flusher)
    assert not (rec.path / MANIFEST_FILE).exists()
    assert not (rec.path / SIGNATURE_FILE).exists()
    assert verify_session(rec.path, signer.public_key) == ["not sealed"]


async def test_logs_of_other_recorders_are_closed_before_sealing(tmp_path, flusher, signer):
    # SFTP/scp/forward logs are not the recording's own writers; an unflushed buffer
    # written after sealing would make the session fail verification.
    rec = await record(tmp_path, "s1", signer, flusher, close=False)
    sftp = OpLog(rec.add_file("sftp-2", ".jsonl"), flusher=flusher)
    sftp.write({"op": "version", "version": 3})
    await rec.close("connection closed")
    assert sftp.closed
    sftp.write({"op": "remove", "path": "/etc/x"})  # a channel winding down: dropped
    await flusher.flush_now()
    assert "version" in (rec.path / "sftp-2.jsonl").read_text()
    assert verify_session(rec.path, signer.public_key) == []


@pytest.mark.parametrize(("tamper", "expected"), [
    ("flip", "file term-0.cast was changed (sha256 differs)"),
    ("truncate", "file exec-1.jsonl was truncated ({n} bytes, manifest says {m})"),
    ("grow", "file exec-1.jsonl grew ({n} bytes, manifest says {m})"),
    ("delete", "file term-0.cast listed in the manifest is missing"),
    ("add", "file notes.txt is not in the manifest (added after sealing)"),
])
async def test_each_alteration_is_named(tmp_path, flusher, signer, tamper, expected):
    rec = await record(tmp_path, "s1", signer, flusher)
    cast, log = rec.path / "term-0.cast", rec.path / "exec-1.jsonl"
    m = log.stat().st_size
    if tamper == "flip":
        data = bytearray(cast.read_bytes())
        data[len(data) // 2] ^= 0x01
        cast.write_bytes(bytes(data))
    elif tamper == "truncate":
        log.write_bytes(log.read_bytes()[:-5])
    elif tamper == "grow":
        log.write_bytes(log.read_bytes() + b'{"t": 9, "type": "stdout", "data": "x"}\n')
    elif tamper == "delete":
        cast.unlink()
    else:
        (rec.path / "notes.txt").write_text("hello")
    n = log.stat().st_size
    assert verify_session(rec.path, signer.public_key) == [expected.format(n=n, m=m)]


async def test_a_rewritten_manifest_is_detected(tmp_path, flusher, signer):
    rec = await record(tmp_path, "s1", signer, flusher)
    cast = rec.path / "term-0.cast"
    cast.write_bytes(cast.read_bytes().replace(b"reboot", b"status"))
    manifest = manifest_of(rec.path)
    for entry in manifest["files"]:  # the hashes the altered files really have
        data = (rec.path / entry["name"]).read_bytes()
        entry["size"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (rec.path / MANIFEST_FILE).write_bytes(canonical(manifest))
    assert verify_session(rec.path, signer.public_key) == [BAD_SIGNATURE]
    assert BAD_SIGNATURE == ("manifest signature does not match: the manifest was altered "
                             "or replaced")
    # ... re-signed with another key: still not the broker's signature
    other = Ed25519PrivateKey.generate()
    (rec.path / SIGNATURE_FILE).write_bytes(
        base64.b64encode(other.sign(canonical(manifest))) + b"\n")
    assert verify_session(rec.path, signer.public_key) == [BAD_SIGNATURE]
    (rec.path / SIGNATURE_FILE).write_text("not base64 !!\n")
    assert verify_session(rec.path, signer.public_key) == [BAD_SIGNATURE]


async def test_removed_seal_reads_not_sealed(tmp_path, flusher, signer):
    rec = await record(tmp_path, "s1", signer, flusher)
    (rec.path / MANIFEST_FILE).unlink()
    assert verify_session(rec.path, signer.public_key) == ["not sealed"]
    assert verify_all(tmp_path, signer.public_key)["s1"] == [
        "not sealed", f"session s1, the last one sealed, {CHAIN_BROKEN}"]


async def test_sessions_are_chained_and_a_deleted_one_breaks_the_chain(
        tmp_path, flusher, signer):
    paths = [(await record(tmp_path, f"s{i}", signer, flusher,
                           start=T0 + timedelta(minutes=i))).path for i in range(3)]
    first = hashlib.sha256((paths[0] / MANIFEST_FILE).read_bytes()).hexdigest()
    assert manifest_of(paths[1])["previous"] == {"session": "s0", "manifest_sha256": first}
    assert verify_all(tmp_path, signer.public_key) == {"s0": [], "s1": [], "s2": []}

    for file in paths[1].iterdir():  # a whole session removed
        file.unlink()
    paths[1].rmdir()
    assert verify_all(tmp_path, signer.public_key) == {
        "s0": [], "s2": [f"session s1 before s2 {CHAIN_BROKEN}"]}


async def test_deleting_the_last_session_is_detected(tmp_path, flusher, signer):
    paths = [(await record(tmp_path, f"s{i}", signer, flusher,
                           start=T0 + timedelta(minutes=i))).path for i in range(2)]
    for file in paths[1].iterdir():
        file.unlink()
    paths[1].rmdir()
    assert verify_all(tmp_path, signer.public_key) == {
        "s0": [], "s1": [f"session s1, the last one sealed, {CHAIN_BROKEN}"]}


async def test_a_replaced_middle_manifest_breaks_the_link_to_it(tmp_path, flusher, signer):
    paths = [(await record(tmp_path, f"s{i}", signer, flusher,
                           start=T0 + timedelta(minutes=i))).path for i in range(3)]
    manifest = manifest_of(paths[1])
    manifest["metadata"]["technician"] = "mallory"
    (paths[1] / MANIFEST_FILE).write_bytes(canonical(manifest))
    assert verify_all(tmp_path, signer.public_key) == {
        "s0": [], "s1": [BAD_SIGNATURE], "s2": [f"session s1 before s2 {CHAIN_BROKEN}"]}


async def test_overlapping_sessions_chain_in_sealing_order(tmp_path, flusher, signer):
    # s0 starts first but ends last: the chain follows the seals, not the start times.
    early = await record(tmp_path, "s0", signer, flusher, close=False)
    late = await record(tmp_path, "s1", signer, flusher, start=T0 + timedelta(minutes=1))
    await early.close("connection closed")
    assert manifest_of(early.path)["previous"]["session"] == "s1"
    assert verify_all(tmp_path, signer.public_key) == {"s0": [], "s1": []}
    for file in late.path.iterdir():
        file.unlink()
    late.path.rmdir()
    assert verify_all(tmp_path, signer.public_key) == {
        "s0": [f"session s1 before s0 {CHAIN_BROKEN}"]}


async def test_live_sessions_are_left_out_of_verify_all(tmp_path, flusher, signer):
    await record(tmp_path, "s0", signer, flusher)
    live = await record(tmp_path, "s1", signer, flusher, start=T0 + timedelta(minutes=1),
                        close=False)
    assert verify_all(tmp_path, signer.public_key) == {"s0": []}
    await live.close("connection closed")


async def test_concurrent_seals_make_one_chain(tmp_path, flusher, signer):
    recs = [await record(tmp_path, f"s{i}", None, flusher, start=T0 + timedelta(minutes=i))
            for i in range(8)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        sealed = list(pool.map(lambda r: seal_directory(r.path, signer, sealed_by="close"),
                               recs))
    assert sealed == [True] * 8
    previous = [manifest_of(r.path)["previous"]["session"] for r in recs]
    assert previous.count(None) == 1
    assert len(set(previous)) == 8  # a line, not a tree
    assert all(not p for p in verify_all(tmp_path, signer.public_key).values())


async def test_recovery_seals_an_interrupted_session(tmp_path, flusher, signer):
    rec = await record(tmp_path, "s1", None, flusher, close=False)
    await flusher.flush_now()  # what a crash leaves on disk
    assert json.loads((rec.path / "session.json").read_text())["ended_at"] is None
    stopped = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)

    assert seal_directory(rec.path, signer, now=lambda: stopped) is True
    meta = json.loads((rec.path / "session.json").read_text())
    assert meta["ended_at"] == stopped.isoformat()
    assert meta["end_reason"] == "interrupted"
    assert meta["technician"] == "alice"
    manifest = manifest_of(rec.path)
    assert manifest["sealed_by"] == "recovery"
    assert manifest["metadata"] == meta
    assert verify_session(rec.path, signer.public_key) == []
    # sealing twice would break the link from the next session: it is left alone
    before = (rec.path / MANIFEST_FILE).read_bytes()
    assert seal_directory(rec.path, signer) is False
    assert (rec.path / MANIFEST_FILE).read_bytes() == before
    # an ended session keeps its own end
    done = await record(tmp_path, "s2", None, flusher, start=T0 + timedelta(minutes=1))
    assert seal_directory(done.path, signer) is True
    assert manifest_of(done.path)["metadata"]["end_reason"] == "connection closed"
    assert manifest_of(done.path)["previous"]["session"] == "s1"


async def test_seal_interrupted_uses_the_configured_key_and_never_raises(
        broker_dir, flusher, caplog):
    config = load_config(broker_dir / "broker.toml")
    rec = await record(config.recordings_dir, "s1", None, flusher, close=False)
    await flusher.flush_now()
    await seal_interrupted(config, rec.path.name)
    public = Signer.from_config(config).public_key
    assert verify_session(rec.path, public) == []
    await seal_interrupted(config, None)
    await seal_interrupted(config, "20260101T000000Z-gone")  # logged, not raised
    (broker_dir / "data" / "recording_ed25519.pem").unlink()
    other = await record(config.recordings_dir, "s2", None, flusher, close=False,
                         start=T0 + timedelta(minutes=1))
    await seal_interrupted(config, other.path.name)  # key gone: cached, or logged
    assert "gone" in caplog.text


# -- the CLI --------------------------------------------------------------------------------

async def three_sessions(broker_dir: Path, flusher: Flusher) -> tuple[Signer, list[Path]]:
    signer = Signer.from_file(broker_dir / "data" / "recording_ed25519.pem")
    root = broker_dir / "recordings"
    paths = [(await record(root, f"s{i}", signer, flusher,
                           start=T0 + timedelta(minutes=i))).path for i in range(3)]
    return signer, paths


async def test_cli_verify_ok_and_all(cli, broker_dir, flusher):
    await three_sessions(broker_dir, flusher)
    one, every, as_json = cli.many([["recordings", "verify", "s1"],
                                    ["recordings", "verify", "--all"],
                                    ["recordings", "verify", "s1", "--json"]])
    assert (one.code, one.out) == (0, "ok\n"), one.err
    assert every.code == 0, every.err
    assert every.out.startswith("ok: 3 sessions, ") and every.out.endswith(", chain intact\n")
    assert as_json.code == 0
    assert json.loads(as_json.out)["ok"] is True
    assert json.loads(as_json.out)["problems"] == []


async def test_cli_verify_reports_alterations(cli, broker_dir, flusher):
    _, paths = await three_sessions(broker_dir, flusher)
    cast = paths[2] / "term-0.cast"
    data = bytearray(cast.read_bytes())
    data[-3] ^= 0x20
    cast.write_bytes(bytes(data))
    for file in paths[1].iterdir():
        file.unlink()
    paths[1].rmdir()
    one, every, as_json, gone = cli.many([["recordings", "verify", "s2"],
                                          ["recordings", "verify", "--all"],
                                          ["recordings", "verify", "--all", "--json"],
                                          ["recordings", "verify", "s1"]])
    assert one.code == 1
    assert one.out == "file term-0.cast was changed (sha256 differs)\n"
    assert one.err_lines == ["broker: session s2 does not verify: 1 problem"]
    assert every.code == 1
    assert every.out.splitlines() == [
        "s2: file term-0.cast was changed (sha256 differs)",
        f"s2: session s1 before s2 {CHAIN_BROKEN}"]
    assert every.err_lines == ["broker: 1 of 2 sessions do not verify"]
    assert as_json.code == 1
    report = json.loads(as_json.out)
    assert report["ok"] is False
    assert [s["session"] for s in report["sessions"] if not s["ok"]] == ["s2"]
    assert gone.code == 1 and "no recorded session 's1'" in gone.err


async def test_cli_verify_usage_errors(cli):
    neither, both = cli.many([["recordings", "verify"],
                              ["recordings", "verify", "s1", "--all"]])
    for result in (neither, both):
        assert result.code == 2
        assert result.err_lines == ["broker: give either a session ID or --all (exactly one)"]


async def test_cli_pubkey_verifies_a_manifest(cli, broker_dir, flusher):
    _, paths = await three_sessions(broker_dir, flusher)
    result = cli("recordings", "pubkey")
    assert result.code == 0, result.err
    assert result.out.startswith("-----BEGIN PUBLIC KEY-----\n")
    public = serialization.load_pem_public_key(result.out.encode())
    assert isinstance(public, Ed25519PublicKey)
    signature = base64.b64decode((paths[0] / SIGNATURE_FILE).read_text())
    public.verify(signature, (paths[0] / MANIFEST_FILE).read_bytes())  # raises if wrong
    assert verify_session(paths[0], public) == []
