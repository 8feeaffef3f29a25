"""One e-mail sent now, while the caller waits (invitation and sign-in links: their secret
must never pass through the audit chain that feeds the notification outbox). Uses the same
SMTP settings and delivery code as the notifier (``[notify] smtp_*``)."""

from __future__ import annotations

import structlog

from broker.domain.durations import parse_duration
from broker.errors import Refused
from broker.services.context import Context

log = structlog.get_logger("broker.mail")


def require_smtp(ctx: Context, what: str) -> None:
    if not ctx.config.settings.notify.smtp_host:
        raise Refused(f"{what} are sent by e-mail, and [notify] smtp_host is not set:"
                      " configure the mail server in broker.toml first")


async def send_now(ctx: Context, to_address: str, to_name: str, subject: str,
                   body: str) -> str | None:
    """Deliver one message; the one-line reason it failed, or None."""
    # imported here: the notify package loads the whole notifier, which `broker vendor ...`
    # and `broker tech ...` should not pay for on every command
    from broker.approvals.notify.channels import DeliveryError, build_mail, send_mail

    settings = ctx.config.settings.notify
    if not settings.smtp_host:
        return "[notify] smtp_host is not set"
    message = build_mail(settings, to_address, to_name, subject, body)
    try:
        await send_mail(settings, message,
                        parse_duration(settings.smtp_timeout).total_seconds())
    except DeliveryError as exc:
        log.warning("mail not delivered", to=to_address, subject=subject, error=str(exc))
        return str(exc)
    return None
