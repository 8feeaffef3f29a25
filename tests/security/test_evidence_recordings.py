"""Issue #16 item 3, the recordings: an attacker who can write the recordings directory and
the database (not the signing key) deletes the newest session and rewrites the chain head,
strips a seal, or puts an older signed head back; ``broker recordings verify --all`` must
fail. Sessions are real: rows made by the broker's services, recordings sealed with the
broker's key, checked by the real CLI."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import select

from broker.config import load_config
from broker.recording import Flusher, SessionRecording, signer_for
from broker.recording.manifest import HEAD_FILE, MANIFEST_FILE, SIGNATURE_FILE
from broker.server import sign_recordings_head
from broker.services.context import Context
from broker.services.sessions import close_session, open_session
from broker.store.models import AuditEvent, Device, Grant, Technician
from tests.conftest import Cli, CliResult


def _populate(cli: Cli) -> None:
    import asyncssh

    key = cli.dir / "alice.pub"
    key.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode())
    for args, env in (
            (("tech", "add", "alice", "--vendor", "BD", "--key", str(key)), None),
            (("device", "add", "pump-7", "--host", "127.0.0.1", "--user", "svc",
              "--password-env", "PW"), {"PW": "device-secret"}),
            (("breakglass", "--tech", "alice", "--device", "pump-7", "--for", "1h",
              "--reason", "alarm loop on ward three"), None)):
        result = cli(*args, env=env)
        assert result.code == 0, result.err


async def _session(ctx: Context, sid: str, *, close: bool = True) -> Path:
    async with ctx.store.session() as db:
        grant = (await db.exec(select(Grant))).one()
        tech = (await db.exec(select(Technician))).one()
        device = (await db.exec(select(Device))).one()
    flusher = Flusher(interval=3600)
    rec = SessionRecording.create(
        ctx.config.recordings_dir, sid, datetime.now(UTC),
        {"technician": "alice", "vendor": "BD", "device": "pump-7", "grant": grant.id,
         "client": "192.0.2.7:50022", "node": ctx.node},
        flusher=flusher, signer=signer_for(ctx.config))
    await open_session(ctx, grant, tech, device, "192.0.2.7:50022", "shell", rec.path.name, sid)
    rec.exec_log(0, "show alarms").stdout(b"occlusion\n")
    if close:
        await rec.close("connection closed")
        await close_session(ctx, sid, "connection closed", 0)
    await flusher.stop()
    return rec.path


@pytest.fixture
async def sessions(cli: Cli) -> AsyncIterator[tuple[Context, list[Path]]]:
    """Three closed, sealed sessions (s1 oldest) and one live one (s4, no manifest yet)."""
    _populate(cli)
    ctx = Context.open(load_config(cli.config))
    try:
        paths = [await _session(ctx, f"s{n}") for n in (1, 2, 3)]
        paths.append(await _session(ctx, "s4", close=False))
        yield ctx, paths
    finally:
        await ctx.close()


def _fails(result: CliResult, *needles: str) -> None:
    assert result.code == 1, (result.out, result.err)
    assert len(result.err_lines) == 1 and "Traceback" not in result.out + result.err
    for needle in needles:
        assert needle in result.out, (needle, result.out)


def _head(ctx: Context) -> Path:
    return ctx.config.recordings_dir / HEAD_FILE


async def test_intact_recordings_and_a_live_session_verify(cli: Cli, sessions) -> None:
    ctx, _paths = sessions
    head = json.loads(_head(ctx).read_text())
    assert head["session"] == "s3" and head["signature"]
    result = cli("recordings", "verify", "--all", "--json")
    assert result.code == 0, result.out + result.err
    report = json.loads(result.out)
    assert [s["session"] for s in report["sessions"]] == ["s1", "s2", "s3"]  # s4 is live


async def test_newest_session_deleted_and_the_head_rewritten(cli: Cli, sessions) -> None:
    ctx, paths = sessions
    previous = json.loads((paths[2] / MANIFEST_FILE).read_text())["previous"]
    shutil.rmtree(paths[2])
    forged = {"directory": paths[1].name, "session": previous["session"],
              "manifest_sha256": previous["manifest_sha256"], "signed_at": "2026-01-01"}
    _head(ctx).write_text(json.dumps(forged))  # no signature: the attacker has no key
    _fails(cli("recordings", "verify", "--all"), f"{HEAD_FILE} is not signed",
           f"recording {paths[2].name} is missing")
    old = json.loads(_head(ctx).read_text())
    _head(ctx).write_text(json.dumps({**forged, "signature": old.get("signature", "AAAA")}))
    _fails(cli("recordings", "verify", "--all"), f"{HEAD_FILE} signature does not match")


async def test_an_older_signed_head_put_back_is_caught(cli: Cli, sessions) -> None:
    """The attacker kept a copy of a genuine signed head from before s3 was sealed."""
    ctx, paths = sessions
    saved = json.loads(_head(ctx).read_text())
    tmp = ctx.config.recordings_dir.parent / "s3-copy"
    shutil.copytree(paths[2], tmp)
    shutil.rmtree(paths[2])
    # the head exactly as the broker signed it when s2 was the newest (made here with the
    # key, standing in for the attacker's saved copy of it)
    from broker.recording.manifest import write_head

    previous = json.loads((tmp / MANIFEST_FILE).read_text())["previous"]
    write_head(ctx.config.recordings_dir, signer_for(ctx.config),
               {"directory": paths[1].name, "session": previous["session"],
                "manifest_sha256": previous["manifest_sha256"],
                "signed_at": json.loads((paths[1] / MANIFEST_FILE).read_text())["sealed_at"]})
    _fails(cli("recordings", "verify", "--all"), f"recording {paths[2].name} is missing",
           "session.started")
    # s3 back in place with the old head: s3 is newer than the head
    shutil.copytree(tmp, paths[2])
    _fails(cli("recordings", "verify", "--all"), "newer than the signed head s2")
    _head(ctx).write_text(json.dumps(saved))
    assert cli("recordings", "verify", "--all").code == 0


async def test_a_stripped_manifest_is_a_finding_not_a_skip(cli: Cli, sessions) -> None:
    _ctx, paths = sessions
    (paths[1] / MANIFEST_FILE).unlink()
    (paths[1] / SIGNATURE_FILE).unlink()
    _fails(cli("recordings", "verify", "--all"),
           "s2: no manifest, and not live on any node",
           "session s2 before s3 is missing or its manifest changed")
    # also when the attacker marks it not ended in session.json
    meta = paths[1] / "session.json"
    data = json.loads(meta.read_text())
    data.pop("ended_at", None)
    meta.write_text(json.dumps(data))
    _fails(cli("recordings", "verify", "--all"), "s2: no manifest, and not live on any node")


async def test_a_rewritten_prefix_and_a_missing_head_are_findings(cli: Cli, sessions) -> None:
    ctx, paths = sessions
    shutil.rmtree(paths[0])
    _fails(cli("recordings", "verify", "--all"), "session s1 before s2 is missing")
    _head(ctx).unlink()
    _fails(cli("recordings", "verify", "--all"), f"{HEAD_FILE} is missing")


async def test_an_unsigned_head_is_signed_once_at_upgrade_and_audited(cli: Cli,
                                                                       sessions) -> None:
    ctx, _paths = sessions
    head = json.loads(_head(ctx).read_text())
    head.pop("signature")
    _head(ctx).write_text(json.dumps(head))  # as a broker before signed heads wrote it
    _fails(cli("recordings", "verify", "--all"), "is not signed")
    await sign_recordings_head(ctx, signer_for(ctx.config))
    assert cli("recordings", "verify", "--all").code == 0
    async with ctx.store.session() as db:
        kinds = (await db.exec(select(AuditEvent.kind))).all()
    assert kinds.count("recording.head_signed") == 1
    await sign_recordings_head(ctx, signer_for(ctx.config))  # nothing to do a second time
    async with ctx.store.session() as db:
        assert (await db.exec(select(AuditEvent.kind))).all().count("recording.head_signed") == 1


async def test_the_evidence_bundle_carries_the_signed_head(cli: Cli, sessions,
                                                           tmp_path: Path) -> None:
    import subprocess
    import sys
    import tarfile

    out = tmp_path / "s3.tar"
    assert cli("recordings", "export", "s3", "--out", str(out)).code == 0
    bundle = tmp_path / "bundle"
    with tarfile.open(out) as tar:
        tar.extractall(bundle, filter="data")

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "verify.py"], cwd=bundle, capture_output=True,
                              text=True, check=False, timeout=60)

    assert (verify().returncode, verify().stdout) == (0, "ok\n")
    head = json.loads((bundle / "chain-head.json").read_text())
    assert head["session"] == "s3"
    (bundle / "chain-head.json").write_text(json.dumps({**head, "session": "s2"}))
    checked = verify()
    assert checked.returncode == 1 and "chain-head.json signature does not match" in \
        checked.stdout


async def test_a_closed_session_marked_live_again_in_the_table_is_still_a_finding(
        cli: Cli, sessions) -> None:
    """The sessions table is not signed: its ``live`` state is believed only while the
    audit log has no ``session.ended`` for the session."""
    from tests.security.evidence_kit import sql

    _ctx, paths = sessions
    (paths[1] / MANIFEST_FILE).unlink()
    sql(cli.dir / "data" / "broker.db", "UPDATE session SET state = 'live', ended_at = NULL "
        "WHERE id = 's2'")
    _fails(cli("recordings", "verify", "--all"), "s2: no manifest, and not live on any node")
