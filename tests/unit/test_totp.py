"""TOTP second factor: ``broker tech totp enroll`` (the real console script), the secret at rest
(vault-encrypted, never in the SQLite files in plain text), and ``verify``: the current code,
the one-step window, wrong codes, replays, and the audit of failures (without the code)."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

import asyncssh
import pyotp
import pytest
from sqlmodel import col, select

from broker.config import load_config
from broker.credentials.vault import Vault
from broker.errors import NotFound
from broker.services import totp
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.setup import initialise, migrate_database
from broker.store.models import AuditEvent, Technician
from broker.testing import FakeClock

if TYPE_CHECKING:
    from conftest import Cli

START = datetime(2026, 11, 24, 9, 0, 10, tzinfo=UTC)  # 10 s into a 30 s step
STEP = timedelta(seconds=30)


def ok_json(result: Any) -> Any:
    assert result.code == 0, result.err
    assert result.err == ""
    return json.loads(result.out)


def database_bytes(directory: Path) -> bytes:
    """Everything SQLite holds on disk: the database file and its WAL/SHM companions."""
    return b"".join(p.read_bytes() for p in sorted((directory / "data").glob("broker.db*")))


# --- the console script -----------------------------------------------------------------------

def test_enroll_prints_uri_and_qr_and_vaults_the_secret(cli: Cli, ssh_pubkey: Path) -> None:
    added = cli("tech", "add", "alice", "--vendor", "BD", "--key", ssh_pubkey)
    assert added.code == 0, added.err
    human, missing = cli.many([("tech", "totp", "enroll", "alice"),
                               ("tech", "totp", "enroll", "nobody")])
    assert human.code == 0, human.err
    lines = human.out.splitlines()
    uri = lines[0]
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    assert unquote(parts.path) == "/Vendor Access Broker:alice"
    query = parse_qs(parts.query)
    assert query["issuer"] == ["Vendor Access Broker"]
    first_secret = query["secret"][0]
    assert len(base64.b32decode(first_secret)) >= 16  # at least 128 random bits
    # a QR code drawn with half blocks follows the URI
    qr_lines = [line for line in lines[1:] if set(line) <= set("█▀▄ ")]
    assert len(qr_lines) >= 15 and all(len(q) == len(qr_lines[0]) for q in qr_lines)
    assert first_secret in human.out.splitlines()[-1]
    assert missing.code == 1 and missing.err_lines == ["broker: no technician named 'nobody'"]

    # --json: only the URI and the secret; re-enrolling replaces the secret
    again = ok_json(cli("tech", "totp", "enroll", "alice", "--json"))
    assert set(again) == {"technician", "uri", "secret"}
    secret = again["secret"]
    assert secret != first_secret
    assert pyotp.parse_uri(again["uri"]).secret == secret
    shown = ok_json(cli("tech", "show", "alice", "--json"))
    assert shown["totp"] is True

    # at rest: encrypted with the vault key, never in plain text (nor as raw bytes)
    stored = database_bytes(cli.dir)
    for secret_text in (secret, first_secret):
        assert secret_text.encode() not in stored
        assert base64.b32decode(secret_text) not in stored
    with sqlite3.connect(cli.dir / "data" / "broker.db") as db:
        (sealed,) = db.execute("SELECT totp_secret FROM technician WHERE name = 'alice'"
                               ).fetchone()
        events = db.execute("SELECT data FROM audit_event WHERE kind = "
                            "'technician.totp_enrolled' ORDER BY seq").fetchall()
    vault = Vault.from_file(cli.dir / "data" / "vault.key")
    assert vault.open(sealed).decode() == secret
    assert [json.loads(e[0]) for e in events] == [{"replaced": False}, {"replaced": True}]
    assert all(secret not in e[0] and first_secret not in e[0] for e in events)


async def test_enrolled_secret_verifies_the_current_code_once(cli: Cli,
                                                              ssh_pubkey: Path) -> None:
    assert cli("tech", "add", "alice", "--vendor", "BD", "--key", ssh_pubkey).code == 0
    secret = ok_json(cli("tech", "totp", "enroll", "alice", "--json"))["secret"]
    ctx = Context.open(load_config(cli.dir / "broker.toml"))  # the real clock
    try:
        code = pyotp.TOTP(secret).now()
        assert await totp.verify(ctx, "alice", code) is True
        assert await totp.verify(ctx, "alice", code) is False  # replay
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        assert await totp.verify(ctx, "alice", wrong) is False
    finally:
        await ctx.close()


# --- the service, on a fake clock -------------------------------------------------------------

async def make_context(tmp_path: Path, clock: FakeClock) -> Context:
    config = initialise(tmp_path)
    await migrate_database(config.database_url)
    ctx = Context.open(config, clock=clock)
    directory = Directory(ctx, "test")
    for name in ("alice", "bob"):
        await directory.add_technician(name, "B. Braun",
                                       [asyncssh.generate_private_key("ssh-ed25519")])
    return ctx


async def failures(ctx: Context) -> list[dict[str, Any]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(AuditEvent.kind == "login.totp_failed")
                              .order_by(col(AuditEvent.seq)))).all()
    return [{"subject": r.subject, "actor": r.actor, **json.loads(r.data)} for r in rows]


async def test_window_replay_and_wrong_codes(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    try:
        secret, uri = await totp.enroll(ctx, "test", "alice")
        assert pyotp.parse_uri(uri).secret == secret
        generator = pyotp.TOTP(secret)
        now = clock.now()
        current, previous, following = (generator.at(now), generator.at(now - STEP),
                                        generator.at(now + STEP))
        two_back = generator.at(now - 2 * STEP)

        assert await totp.verify(ctx, "alice", two_back) is False  # outside the window
        assert await totp.verify(ctx, "alice", previous) is True  # one step late: accepted
        assert await totp.verify(ctx, "alice", previous) is False  # ... once
        assert await totp.verify(ctx, "alice", f"{current[:3]} {current[3:]}") is True
        assert await totp.verify(ctx, "alice", current) is False  # replay of the same code
        assert await totp.verify(ctx, "alice", previous) is False  # older than the last used
        assert await totp.verify(ctx, "alice", following) is True  # one step early: accepted
        # the next step's code was used, so when that step comes its code is spent
        clock.advance(STEP)
        assert await totp.verify(ctx, "alice", generator.at(clock.now())) is False
        clock.advance(STEP)
        assert await totp.verify(ctx, "alice", generator.at(clock.now())) is True

        wrong = f"{(int(generator.at(clock.now())) + 1) % 1_000_000:06d}"
        assert await totp.verify(ctx, "alice", wrong) is False
        assert await totp.verify(ctx, "alice", "12345") is False
        assert await totp.verify(ctx, "alice", "abcdef") is False
        assert await totp.verify(ctx, "bob", generator.at(clock.now())) is False  # not enrolled
        assert await totp.verify(ctx, "mallory", "123456") is False

        audited = await failures(ctx)
        assert [a["reason"] for a in audited] == [
            "wrong code", "code already used", "code already used", "code already used",
            "code already used", "wrong code", "malformed code", "malformed code",
            "not enrolled", "unknown technician"]
        assert audited[0]["subject"] == "alice" and audited[0]["actor"] == "technician:alice"
        codes = {two_back, previous, current, wrong, "12345", "abcdef"}
        assert all(not any(c in json.dumps(a) for c in codes) for a in audited)
        async with ctx.store.session() as db:
            alice = (await db.exec(select(Technician).where(Technician.name == "alice"))).one()
        assert alice.totp_last_step == generator.timecode(clock.now())
    finally:
        await ctx.close()


async def test_reenrolling_replaces_the_secret(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    try:
        old, _ = await totp.enroll(ctx, "test", "alice")
        assert await totp.enrolled(ctx, "alice") and not await totp.enrolled(ctx, "bob")
        new, uri = await totp.enroll(ctx, "test", "alice")
        assert new != old and pyotp.parse_uri(uri).name == "alice"
        assert await totp.verify(ctx, "alice", pyotp.TOTP(old).at(clock.now())) is False
        assert await totp.verify(ctx, "alice", pyotp.TOTP(new).at(clock.now())) is True
        with pytest.raises(NotFound, match="no technician named 'nobody'"):
            await totp.enroll(ctx, "test", "nobody")
        async with ctx.store.session() as db:
            alice = (await db.exec(select(Technician).where(Technician.name == "alice"))).one()
        assert alice.totp_secret is not None and new.encode() not in alice.totp_secret
        assert ctx.vault.open(alice.totp_secret).decode() == new
    finally:
        await ctx.close()


async def test_a_code_wins_only_once_when_logins_race(tmp_path: Path) -> None:
    clock = FakeClock(START)
    ctx = await make_context(tmp_path, clock)
    try:
        secret, _ = await totp.enroll(ctx, "test", "alice")
        code = pyotp.TOTP(secret).at(clock.now())
        results = await asyncio.gather(*(totp.verify(ctx, "alice", code) for _ in range(5)))
        assert sorted(results) == [False, False, False, False, True]
    finally:
        await ctx.close()
