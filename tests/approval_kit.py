"""Shared set-up for the approval-link and notification tests: people, a device with a trust
record, a two-group policy, links, and the audit trail as the tests read it."""

from __future__ import annotations

import email
import email.policy
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import asyncssh
from sqlmodel import col, select

from broker.approvals import links
from broker.approvals.tokens import ApprovalClaims
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.requests import Requests
from broker.store.models import AccessRequest, AuditEvent, Device

_HOST = asyncssh.generate_private_key("ssh-ed25519")
HOST_KEY = _HOST.export_public_key().decode().strip()
HOST_KEY_FINGERPRINT = _HOST.get_fingerprint("sha256")
TWO_GROUPS = """\
policies:
  - name: pumps-two-groups
    devices: {tags: [infusion]}
    max_duration: 4h
    approvals:
      - {count: 1, groups: [biomed]}
      - {count: 1, groups: [security]}
"""


async def staff_and_device(ctx: Context) -> None:
    """alice (technician, BD); approvers bob (biomed), carol (security), dave (radiology),
    mallory (biomed, alice's own e-mail address); device pump1 with a full trust record."""
    directory = Directory(ctx, "test")
    await directory.add_technician("alice", "BD", [], email="alice@bd.example")
    await directory.add_approver("bob", "bob@hospital.example", ["biomed"])
    await directory.add_approver("carol", "carol@hospital.example", ["security"])
    await directory.add_approver("dave", "dave@hospital.example", ["radiology"])
    await directory.add_approver("mallory", "ALICE@bd.example", ["biomed"])
    await directory.add_device(Device(
        name="pump1", host="127.0.0.1", port=22, login_user="svc", model="Alaris 8015",
        firmware="12.1.3", department="ICU", purpose="infusion pumps, ward 4",
        tags=["infusion"], host_key=HOST_KEY), "password", b"pw", owner="biomed on-call")


def two_group_policy(broker_dir: Path) -> None:
    (broker_dir / "policies" / "pumps.yaml").write_text(TWO_GROUPS)


async def file_request(ctx: Context, hours: int = 1) -> int:
    request = await Requests(ctx, "technician:alice").create(
        "alice", "pump1", timedelta(hours=hours), "replace drug library 4.2")
    assert request.id is not None
    return request.id


def link_for(ctx: Context, request_id: int, approver: str) -> tuple[str, ApprovalClaims]:
    """(path /approve/<token>, claims) of a fresh link."""
    link = links.issue(ctx, links.web_secret(ctx.config), request_id, approver)
    return "/approve/" + link.url.rsplit("/approve/", 1)[1], link.claims


async def events(ctx: Context, kind: str | None = None) -> list[tuple[str, str | None, dict]]:
    async with ctx.store.session() as db:
        query = select(AuditEvent).order_by(col(AuditEvent.seq))
        if kind:
            query = query.where(AuditEvent.kind == kind)
        return [(e.kind, e.subject, json.loads(e.data)) for e in (await db.exec(query)).all()]


async def request_state(ctx: Context, request_id: int) -> str:
    async with ctx.store.session() as db:
        request = await db.get(AccessRequest, request_id)
        assert request is not None
        return request.state


def set_config(broker_dir: Path, section: str, **values: object) -> None:
    """Set keys of one section in broker.toml (each key must already be in the file)."""
    path = broker_dir / "broker.toml"
    text = path.read_text()
    head, marker, rest = text.partition(f"[{section}]\n")
    assert marker, f"no [{section}] in {path}"
    for key, value in values.items():
        rendered = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
        rest, count = re.subn(rf"^{key} = .*$", f"{key} = {rendered}", rest, count=1,
                              flags=re.MULTILINE)
        assert count == 1, f"no key {key} in [{section}]"
    path.write_text(head + marker + rest)


@dataclass
class Mailbox:
    messages: list[EmailMessage] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if address in str(m["To"])]


@contextmanager
def smtp_server() -> Iterator[tuple[Mailbox, int]]:
    """A real aiosmtpd server on a loopback port, collecting what it receives."""
    from aiosmtpd.controller import Controller

    from tests.integration.harness import free_port

    mailbox, port = Mailbox(), free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def body_text(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())
