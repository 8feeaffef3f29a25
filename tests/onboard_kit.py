"""Shared set-up for the vendor self-service tests: a vendor with a domain and a contact, a
real aiosmtpd mailbox wired into broker.toml, and reading links out of the mails."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path

import asyncssh

from broker.services.context import Context
from broker.services.vendors import Vendors
from tests.approval_kit import Mailbox, body_text, set_config

VENDOR = "Acme Medical"
DOMAIN = "acme.example"
CONTACT = "boss@acme.example"
OTHER = "Imaging Co"
OTHER_CONTACT = "lead@imaging.example"


def use_smtp(broker_dir: Path, port: int) -> None:
    set_config(broker_dir, "notify", smtp_host="127.0.0.1", smtp_port=port)


async def vendors(ctx: Context) -> None:
    """``Acme Medical`` (acme.example, contact boss@) and ``Imaging Co`` (imaging.example,
    contact lead@)."""
    await Vendors(ctx, "test").add(VENDOR, [DOMAIN], None, CONTACT)
    await Vendors(ctx, "test").add(OTHER, ["imaging.example"], None, OTHER_CONTACT)


def link_in(message: EmailMessage, path: str) -> str:
    """The path (``/onboard/...`` or ``/vendor/login/...``) of the link in a mail."""
    match = re.search(rf"https?://[^/\s]+({re.escape(path)}[^\s]+)", body_text(message))
    assert match, body_text(message)
    return match.group(1)


def last_to(mailbox: Mailbox, address: str) -> EmailMessage:
    mails = mailbox.to(address)
    assert mails, f"no mail to {address}: {[str(m['To']) for m in mailbox.messages]}"
    return mails[-1]


def public_key(kind: str = "ssh-ed25519", **options: int) -> str:
    key = asyncssh.generate_private_key(kind, comment="tech@laptop", **options)
    return key.export_public_key().decode().strip()
