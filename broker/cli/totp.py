"""``broker tech totp enroll``, and the enrolment's QR code (staff users' too)."""

from __future__ import annotations

import io
import sys

import click

from broker.cli._base import actor, common, emit, run
from broker.services import totp as totp_service


@click.group("totp")
def totp() -> None:
    """TOTP second factor (authenticator app)."""


@totp.command("enroll")
@click.argument("name")
@common()
def totp_enroll(name: str, config_file: str | None, as_json: bool) -> None:
    """Give a technician a new TOTP secret (replacing any old one); show it as a QR code."""
    secret, uri = run(config_file, lambda ctx: totp_service.enroll(ctx, actor(), name))
    if as_json:
        emit(True, {"technician": name, "uri": uri, "secret": secret})
        return
    show_enrollment(uri, secret, f"technician {name}")


def show_enrollment(uri: str, secret: str, who: str) -> None:
    """The otpauth URI, its QR code and the secret to type in by hand."""
    click.echo(uri)
    click.echo(_terminal_qr(uri), nl=False)
    click.echo(f"secret (to type in by hand): {secret}")
    click.echo(f"{who} enrolled for TOTP; scan the code with an authenticator app", err=True)


def _terminal_qr(text: str) -> str:
    """The QR code as text: compact Unicode half blocks, or ANSI colours where the terminal's
    encoding cannot show those."""
    import segno

    qr = segno.make(text, error="m")
    buffer = io.StringIO()
    qr.terminal(out=buffer, compact=True)
    drawn = buffer.getvalue()
    try:
        drawn.encode(sys.stdout.encoding or "ascii")
    except (UnicodeEncodeError, LookupError):
        buffer = io.StringIO()
        qr.terminal(out=buffer, compact=False)
        drawn = buffer.getvalue()
    return drawn
