"""``broker breakglass``: an immediate grant with no approval, reviewed afterwards."""

from __future__ import annotations

from typing import Any

import click

from broker.cli._base import actor, common, duration, emit, run
from broker.domain.durations import format_duration
from broker.services import breakglass as service
from broker.services import render
from broker.services.context import Context
from broker.services.grants import Grants


@click.command("breakglass")
@click.option("--tech", required=True, help="technician name")
@click.option("--device", "device_name", required=True, help="device name")
@click.option("--for", "for_", required=True, metavar="DURATION",
              help="e.g. 30m; at most the policy's breakglass_max (default policy: 1h)")
@click.option("--reason", required=True, help="the emergency, in a few words at least")
@common()
def breakglass_command(tech: str, device_name: str, for_: str, reason: str,
                       config_file: str | None, as_json: bool) -> None:
    """Open an emergency grant NOW, without approval.

    Every approver is notified, the technician's sessions say BREAK-GLASS, and the grant
    stays on 'broker grant list --unreviewed' until an approver runs 'broker grant review'.
    """
    length = duration("--for", for_)
    who = actor()

    async def body(ctx: Context) -> dict[str, Any]:
        grant = await service.open_breakglass(ctx, tech, device_name, length, reason, who)
        return render.grant(await Grants(ctx, who).show(grant.id or 0))

    d = run(config_file, body)
    emit(as_json, d,
         f"BREAK-GLASS grant {d['id']} open now: {tech} on {device_name} for"
         f" {format_duration(length)} until {d['end']:%Y-%m-%d %H:%M:%SZ}"
         f" ({','.join(d['protocols'])}); every approver is notified and the grant awaits"
         f" review: broker grant review {d['id']} --as APPROVER --comment TEXT")
