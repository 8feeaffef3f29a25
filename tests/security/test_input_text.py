"""Free text from every channel: one rule (broker/domain/text.py), enforced by the services,
so the CLI (exit 2, one line), the REST API (a JSON error naming the field), the staff portal
and approval pages (the form's message) all refuse terminal escapes, fake lines, bidi
overrides and 100,000-character reasons; text already stored (rows older than the rule) is
shown escaped on the admin's terminal, in e-mail (real aiosmtpd) and on the pages.
(SSH: tests/security/test_input_ssh.py.)"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from broker.approvals.notify import Notifier
from broker.config import load_config
from broker.domain.errors import InvariantViolation
from broker.domain.text import MAX_REASON, TextError, check_text, forbidden, visible
from broker.errors import BadText
from broker.services.context import Context
from broker.services.directory import Directory, parse_public_keys
from broker.services.grants import Grants
from broker.services.requests import Requests
from broker.store.models import AccessRequest, Approval, AuditEvent, Device
from broker.testing import FakeClock
from tests.approval_kit import (
    Mailbox,
    body_text,
    file_request,
    link_for,
    request_state,
    set_config,
    smtp_server,
    staff_and_device,
    two_group_policy,
)
from tests.conftest import Cli
from tests.unit.api_kit import seed
from tests.unit.staff_kit import add_staff, csrf_of, sign_in
from tests.web_kit import portal

ESCAPES = "\x1b[2J\x1b]0;owned\x07"
FAKE_BLOCK = "fix pump\n\nAPPROVE HERE: https://evil.example/approve\n"
BAD = [
    ("\x1b[2J wipe the screen", "U+001B (ESC) at character 1"),
    ("title \x1b]0;owned\x07", "U+001B (ESC) at character 7"),
    (FAKE_BLOCK, "U+000A (line feed) at character 9"),
    ("a\rb", "U+000D (carriage return)"),
    ("tab\there", "U+0009 (tab)"),
    ("nul\x00", "U+0000 (NUL)"),
    ("del\x7f", "U+007F (DEL)"),
    ("csi\x9b2J", "U+009B (CSI)"),
    ("nel\x85", "U+0085 (NEL)"),
    ("pump\u202eevil", "bidirectional override U+202E"),
    ("pump\u2066x\u2069", "bidirectional override U+2066"),
    ("line\u2028sep", "line separator U+2028"),
    ("para\u2029sep", "U+2029 (paragraph separator)"),
    ("lone \ud800", "lone surrogate U+D800"),
]
GOOD = ["replace the battery", "Akku tauschen — Station 4, Bett 7 (ÄÖÜ ß)", "😀 ok",
        "שלום עולם", "x" * MAX_REASON, "  padded  "]


# -- the rule itself ---------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "words"), BAD)
def test_the_rule_refuses_each_class_naming_field_and_place(text: str, words: str) -> None:
    with pytest.raises(TextError) as caught:
        check_text("reason", text, MAX_REASON)
    message = str(caught.value)
    assert message.startswith("reason: ") and words in message
    assert not any(forbidden(c) for c in message) and text not in message  # never echoed
    assert isinstance(caught.value, InvariantViolation) and caught.value.field == "reason"


@pytest.mark.parametrize("text", GOOD)
def test_the_rule_accepts_ordinary_text_of_any_script(text: str) -> None:
    assert check_text("reason", text, MAX_REASON) == text.strip()


def test_every_code_point_is_judged_the_same_by_check_and_visible() -> None:
    for code in range(0x110000):
        char = chr(code)
        refused = forbidden(char)
        assert (visible(char) != char) == refused, hex(code)
        if refused:
            with pytest.raises(TextError):
                check_text("reason", char, 10)


def test_length_is_checked_first_and_empty_when_required() -> None:
    with pytest.raises(TextError, match=r"reason: is longer than 2000 characters \(100000"):
        check_text("reason", "\x1b" * 100_000, MAX_REASON)
    with pytest.raises(TextError, match="comment: must not be empty"):
        check_text("comment", "   ", 10, required=True)


def test_visible_escapes_every_refused_character_and_nothing_else() -> None:
    every = "".join(chr(c) for c in range(0x20)) + "\x7f\x85\x9b\u202a\u202e\u2066\u2069" \
        "\u2028\u2029\ud800"
    shown = visible("ok " + every + " ok")
    assert not any(forbidden(c) for c in shown)
    assert shown.startswith("ok \\x00\\x01") and "\\x1b" in shown and "\\n" in shown
    assert "\\u202e" in shown and "\\u2028" in shown and shown.endswith("\\ud800 ok")
    plain = "Akku tauschen — שלום 😀 C:\\logs"
    assert visible(plain) is plain


# -- the CLI: exit 2, one line naming the field, audited ---------------------------------------
async def _people(ctx: Context, pubkey: Path) -> int:
    directory = Directory(ctx, "test")
    await directory.add_technician("bob", "Acme", parse_public_keys(pubkey.read_text(), "k"))
    await directory.add_approver("carol", "carol@hospital.example", ["biomed"])
    await directory.add_device(Device(name="pump-1", host="127.0.0.1", login_user="svc"),
                               "password", b"pw")
    request = await Requests(ctx, "test").create("bob", "pump-1", timedelta(hours=1), "ok")
    return request.id or 0


async def _open(broker_dir: Path, clock: FakeClock | None = None) -> Context:
    return Context.open(load_config(broker_dir / "broker.toml"), clock=clock)


async def _kinds(ctx: Context, kind: str) -> list[dict[str, Any]]:
    async with ctx.store.session() as db:
        rows = (await db.exec(select(AuditEvent).where(AuditEvent.kind == kind)
                              .order_by(col(AuditEvent.seq)))).all()
    return [{"actor": r.actor, "subject": r.subject, **json.loads(r.data)} for r in rows]


def _one_line(result: Any, words: str) -> None:
    assert result.code == 2, (result.out, result.err)
    assert result.err.count("\n") == 1 and words in result.err, result.err
    assert "Traceback" not in result.err and not any(forbidden(c) for c in result.err[:-1])


async def test_cli_refuses_bad_free_text_in_every_command(broker_dir: Path, cli: Cli,
                                                          ssh_pubkey: Path) -> None:
    ctx = await _open(broker_dir)
    try:
        ident = await _people(ctx, ssh_pubkey)
    finally:
        await ctx.close()
    cases = [
        (["request", "create", "--tech", "bob", "--device", "pump-1", "--for", "1h",
          "--reason", "fix\x1b]0;x\x07"], "reason: contains a control character U+001B"),
        (["request", "create", "--tech", "bob", "--device", "pump-1", "--for", "1h",
          "--reason", "y" * 100_000], "reason: is longer than 2000 characters (100000 given)"),
        (["request", "approve", str(ident), "--as", "carol", "--comment", FAKE_BLOCK],
         "comment: contains a control character U+000A (line feed)"),
        (["breakglass", "--tech", "bob", "--device", "pump-1", "--for", "10m", "--reason",
          "pump is down \u202eni"], "reason: contains a bidirectional override U+202E"),
        (["device", "add", "pump-9", "--host", "h", "--user", "u", "--password-env", "PW",
          "--purpose", "ward\u20284"], "purpose: contains a line separator U+2028"),
    ]
    for args, words in cases:
        _one_line(cli(*args, env={"PW": "x"}), words)
    assert json.loads(cli("request", "show", str(ident), "--json").out)["state"] == "pending"
    ctx = await _open(broker_dir)
    try:
        refused = await _kinds(ctx, "input.refused")
        assert [r["field"] for r in refused] == ["reason", "reason", "comment", "reason",
                                                 "purpose"]
        assert all(not any(forbidden(c) for c in r["sample"]) for r in refused)
        async with ctx.store.session() as db:
            assert len((await db.exec(select(AccessRequest))).all()) == 1
            assert (await db.exec(select(Approval))).first() is None
    finally:
        await ctx.close()


async def test_services_refuse_for_every_caller(broker_dir: Path, ssh_pubkey: Path) -> None:
    ctx = await _open(broker_dir)
    try:
        ident = await _people(ctx, ssh_pubkey)
        decision = await Requests(ctx, "test").decide(ident, "carol", True, "fine")
        assert decision.grant is not None
        with pytest.raises(BadText, match=r"reason: contains a control character U\+001B"):
            await Grants(ctx, "test").revoke(decision.grant.id or 0, ESCAPES)
        from broker.services.sessions import kill_session

        with pytest.raises(BadText, match="reason: contains"):
            await kill_session(ctx, "no-such-session", "test", "bye\r\nAPPROVED")
        with pytest.raises(BadText, match="vendor: contains a control"):
            await Directory(ctx, "test").add_technician(
                "eve", "Acme\x1b[31m", parse_public_keys(ssh_pubkey.read_text(), "k"))
        with pytest.raises(BadText, match=r"email: .* is not an e-mail address"):
            await Directory(ctx, "test").add_approver("eve", "eve@x.example\r\nBcc: a@b", [])
        grant = await Grants(ctx, "test").show(decision.grant.id or 0)
        assert grant.grant.state == "active"
    finally:
        await ctx.close()


# -- the REST API: a JSON error naming the field -----------------------------------------------
async def test_api_refuses_bad_free_text_naming_the_field(broker_dir: Path) -> None:
    async with portal(broker_dir, clock=FakeClock()) as (client, ctx):
        s = await seed(ctx)
        good = {"technician": "bob", "device": "pump-2", "duration_s": 3600}
        cases = [
            ("POST", "/requests", "admin", {**good, "reason": "fix" + ESCAPES}, "reason",
             "contains a control character U+001B"),
            ("POST", "/requests", "admin", {**good, "reason": "z" * 100_000}, "reason",
             "2000"),
            ("POST", f"/requests/{s.pending}/approve", "approver", {"comment": FAKE_BLOCK},
             "comment", "U+000A (line feed)"),
            ("POST", f"/grants/{s.grant}/revoke", "admin", {"reason": "a\u202eb"}, "reason",
             "bidirectional override U+202E"),
            ("POST", f"/sessions/{s.session}/kill", "admin", {"reason": "a\x9bb"}, "reason",
             "U+009B (CSI)"),
        ]
        for method, path, role, body, field, words in cases:
            response = await client.request(method, "/api/v1" + path, json=body,
                                            headers=s.auth(role))
            answer = await response.json()
            assert response.status in (400, 422), answer
            assert answer["field"] == field and words in answer["error"], answer
            assert not any(forbidden(c) for c in answer["error"])
        async with ctx.store.session() as db:
            assert len((await db.exec(select(AccessRequest))).all()) == 2  # seeded only
            pending = await db.get(AccessRequest, s.pending)
            assert pending is not None and pending.state == "pending"


# -- the web forms: the portal and the approval page -------------------------------------------
async def test_staff_forms_refuse_bad_free_text(broker_dir: Path, ssh_pubkey: Path) -> None:
    async with portal(broker_dir, clock=FakeClock()) as (client, ctx):
        ident = await _people(ctx, ssh_pubkey)
        await add_staff(ctx, "root", "admin", approver="carol")
        csrf = await sign_in(client, ctx, "root")
        for path, form, words in [
            (f"/staff/requests/{ident}/decide", {"decision": "approve", "comment": ESCAPES},
             "comment: contains a control character U+001B"),
            ("/staff/breakglass", {"technician": "bob", "device": "pump-1", "duration": "10m",
                                   "reason": "pump down now\r\nok"},
             "reason: contains a control character U+000D"),
        ]:
            response = await client.post(path, data={"csrf": csrf, **form},
                                         allow_redirects=False)
            page = await response.text()
            assert response.status == 400 and words in page, page
            assert "\x1b" not in page
        assert await request_state(ctx, ident) == "pending"


async def test_approval_page_refuses_bad_comment_and_keeps_the_link(broker_dir: Path) -> None:
    clock = FakeClock()
    two_group_policy(broker_dir)
    async with portal(broker_dir, clock=clock) as (client, ctx):
        await staff_and_device(ctx)
        ident = await file_request(ctx)
        path, _ = link_for(ctx, ident, "bob")
        csrf = csrf_of(await (await client.get(path)).text())
        for comment, words in ((FAKE_BLOCK, "U+000A (line feed)"),
                               ("c" * 100_000, "longer than 2000 characters")):
            response = await client.post(path, data={"csrf": csrf, "decision": "approve",
                                                     "comment": comment})
            page = await response.text()
            assert response.status == 400 and "comment: " in page and words in page
        assert await request_state(ctx, ident) == "pending"
        ok = await client.post(path, data={"csrf": csrf, "decision": "approve",
                                           "comment": "checked with the ward"})
        assert ok.status == 200  # the refused attempts did not spend the link


# -- stored text (rows older than the rule) is shown escaped everywhere ------------------------
async def _poison(ctx: Context, ident: int) -> None:
    async with ctx.store.session() as db:
        row = await db.get(AccessRequest, ident)
        assert row is not None
        row.reason = ESCAPES + FAKE_BLOCK + "\u202eevil"
        db.add(row)


async def test_old_rows_are_escaped_on_the_admin_terminal(broker_dir: Path, cli: Cli,
                                                          ssh_pubkey: Path) -> None:
    ctx = await _open(broker_dir)
    try:
        ident = await _people(ctx, ssh_pubkey)
        await _poison(ctx, ident)
        async with ctx.store.session() as db:
            carol = 1
            db.add(Approval(request_id=ident, approver_id=carol, decision="deny",
                            comment="no\x1b[8m hidden", via="cli", created_at=ctx.now()))
    finally:
        await ctx.close()
    for args in (["request", "show", str(ident)], ["request", "list"]):
        result = cli(*args)
        assert result.code == 0, result.err
        assert not any(forbidden(c) for c in result.out.replace("\n", "")), result.out
        assert "\\x1b[2J" in result.out
        assert not any(line.startswith("APPROVE HERE") for line in result.out.splitlines())
    shown = cli("request", "show", str(ident)).out
    assert "\\nAPPROVE HERE: https://evil.example/approve\\n\\u202eevil" in shown
    assert "no\\x1b[8m hidden" in shown
    # --json stays exact (JSON escapes control characters itself)
    data = json.loads(cli("request", "show", str(ident), "--json").out)
    assert data["reason"] == ESCAPES + FAKE_BLOCK + "\u202eevil"


async def test_old_rows_are_escaped_in_email(broker_dir: Path) -> None:
    clock = FakeClock()
    two_group_policy(broker_dir)
    with smtp_server() as (mailbox, port):
        set_config(broker_dir, "notify", smtp_host="127.0.0.1", smtp_port=port,
                   mail_from="broker@hospital.example")
        ctx = await _open(broker_dir, clock)
        try:
            await staff_and_device(ctx)
            ident = await file_request(ctx)
            await _poison(ctx, ident)
            notifier = Notifier(ctx)
            assert await notifier.plan_new_events() == 2
            assert await notifier.deliver_due() == 2
        finally:
            await ctx.close()
        for _ in range(50):
            if len(mailbox.messages) == 2:
                break
            await asyncio.sleep(0.05)
        message = _mail(mailbox)
    text = body_text(message)
    assert not [c for c in text.replace("\r\n", "").replace("\n", "") if forbidden(c)], text
    (line,) = [x for x in text.splitlines() if x.startswith("Reason:")]
    assert line.endswith("\\x1b[2J\\x1b]0;owned\\x07fix pump\\n\\nAPPROVE HERE:"
                         " https://evil.example/approve\\n\\u202eevil")
    assert not any(x.startswith("APPROVE HERE") for x in text.splitlines())
    assert len(re.findall(r"^https://broker\.test:8443/approve/[\w.-]+\r?$", text, re.M)) == 1


def _mail(mailbox: Mailbox) -> Any:
    (message,) = mailbox.to("bob@hospital.example")
    return message


async def test_old_rows_are_escaped_on_pages(broker_dir: Path) -> None:
    clock = FakeClock()
    two_group_policy(broker_dir)
    async with portal(broker_dir, clock=clock) as (client, ctx):
        await staff_and_device(ctx)
        ident = await file_request(ctx)
        await _poison(ctx, ident)
        path, _ = link_for(ctx, ident, "bob")
        await add_staff(ctx, "aud", "admin")
        pages = [await (await client.get(path)).text()]
        await sign_in(client, ctx, "aud")
        pages.append(await (await client.get("/staff/requests")).text())
        for page in pages:
            assert "\\x1b[2J\\x1b]0;owned\\x07fix pump\\n\\nAPPROVE HERE" in page
            assert not any(forbidden(c) for c in page.replace("\n", ""))
