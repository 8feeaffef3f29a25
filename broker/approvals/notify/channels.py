"""Delivering one notification: a signed JSON webhook POST, or an e-mail over SMTP."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import secrets
import smtplib
import ssl
import stat
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from pathlib import Path

import aiohttp

from broker.config import Config, NotifySection
from broker.credentials.files import write_secret
from broker.errors import ConfigError

SIGNATURE_HEADER = "X-Broker-Signature"
TIMESTAMP_HEADER = "X-Broker-Timestamp"


class DeliveryError(Exception):
    """This attempt failed (one line: what the far end or the network said)."""


def sign(secret: bytes, body: bytes) -> str:
    """The ``X-Broker-Signature`` value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def webhook_secret_path(config: Config) -> Path:
    return config.path(config.settings.notify.webhook_secret_file)


def create_webhook_secret(config: Config) -> Path | None:
    """Called by ``broker init``: a random key in a 0600 file, never overwritten. The HMAC key
    is the file's text without its trailing newline (give the same text to the receiver)."""
    path = webhook_secret_path(config)
    return path if write_secret(path, secrets.token_hex(32).encode() + b"\n") else None


def load_webhook_secret(path: Path) -> bytes:
    try:
        info = path.stat()
        data = path.read_bytes().strip()
    except FileNotFoundError:
        raise ConfigError(f"{path}: the webhook secret is missing (run 'broker init')") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the webhook secret: {exc.strerror}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ConfigError(f"{path}: the webhook secret must be readable by its owner only"
                          " (chmod 600)")
    if len(data) < 16:
        raise ConfigError(f"{path}: the webhook secret is shorter than 16 bytes")
    return data


async def post_webhook(session: aiohttp.ClientSession, url: str, secret: bytes, body: bytes,
                       *, timestamp: int, event: str, delivery: int, timeout: float) -> None:
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(secret, body),
               TIMESTAMP_HEADER: str(timestamp), "X-Broker-Event": event,
               "X-Broker-Delivery": str(delivery), "User-Agent": "vendor-access-broker"}
    try:
        async with session.post(url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout),
                                allow_redirects=False) as response:
            if not 200 <= response.status < 300:
                raise DeliveryError(f"webhook answered HTTP {response.status}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise DeliveryError(f"webhook unreachable: {type(exc).__name__}: {exc}"[:300]) from None


def build_mail(settings: NotifySection, to_address: str, to_name: str, subject: str,
               body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = formataddr((to_name, to_address))
    message["Subject"] = subject
    message["Message-ID"] = make_msgid(domain=settings.mail_from.rpartition("@")[2] or None)
    message.set_content(body)
    return message


async def send_mail(settings: NotifySection, message: EmailMessage, timeout: float) -> None:
    """SMTP in a worker thread (the event loop never waits on a mail server)."""
    password = ""
    if settings.smtp_password_env:
        password = os.environ.get(settings.smtp_password_env, "")
        if not password:
            raise DeliveryError(f"[notify] smtp_password_env: ${settings.smtp_password_env}"
                                " is not set")

    def deliver() -> None:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_user:
                smtp.login(settings.smtp_user, password)
            smtp.send_message(message)

    try:
        await asyncio.to_thread(deliver)
    except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise DeliveryError(f"SMTP {settings.smtp_host}:{settings.smtp_port}: "
                            f"{type(exc).__name__}: {exc}"[:300]) from None
