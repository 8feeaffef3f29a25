"""``broker siem ...``: the audit stream to the hospital's SIEM."""

from __future__ import annotations

import click

from broker.cli._base import common, emit, run
from broker.services.context import Context
from broker.siem.forwarder import SiemStatus, status


@click.group("siem")
def siem() -> None:
    """The audit stream to the SIEM (syslog)."""


@siem.command("status")
@common()
def siem_status(config_file: str | None, as_json: bool) -> None:
    """Cursor, chain head, lag and the last error of the SIEM stream."""

    async def body(ctx: Context) -> SiemStatus:
        return await status(ctx)

    result = run(config_file, body)

    def human() -> None:
        state = f"on: {result.target} ({result.format})" if result.enabled else \
            "off ([siem] syslog_url is empty)"
        click.echo(f"stream:     {state}")
        click.echo(f"cursor:     {result.cursor} (events up to this seq were sent)")
        click.echo(f"head:       {result.head}")
        click.echo(f"lag:        {result.lag} event(s) not yet sent")
        click.echo(f"forwarder:  {result.forwarding_node or 'none right now'}")
        if result.last_sent_at:
            click.echo(f"last sent:  {result.last_sent_at.isoformat()}")
        if result.last_error:
            when = result.last_error_at.isoformat() if result.last_error_at else "?"
            click.echo(f"last error: {result.last_error} (at {when})")

    emit(as_json, result.to_json(), human)
