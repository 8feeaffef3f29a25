"""``broker vendor invite|invitations|withdraw-invitation`` and ``broker tech
approve|reject``: technicians' self-service onboarding (:mod:`broker.services.invitations`).
The ``vendor`` and ``tech`` groups are the ones of :mod:`.vendors` and :mod:`.people`, with
these commands added."""

from __future__ import annotations

from typing import Any

import click

from broker.cli._base import actor, common, emit, run, table
from broker.cli.people import tech
from broker.cli.vendors import vendor
from broker.services.context import Context
from broker.services.invitations import DEFAULT_TTL, Invitations, InvitationView
from broker.services.vendor_views import invitation_record as render

__all__ = ["tech", "vendor"]


@vendor.command("invite")
@click.argument("name", metavar="VENDOR")
@click.option("--email", required=True, metavar="EMAIL",
              help="the technician's address (in one of the vendor's domains)")
@click.option("--name", "tech_name", default=None, metavar="NAME",
              help="suggested user name (the technician may change it)")
@click.option("--expires", default=DEFAULT_TTL, show_default=True, metavar="DURATION",
              help="how long the link works (5m to 30d)")
@common()
def vendor_invite(name: str, email: str, tech_name: str | None, expires: str,
                  config_file: str | None, as_json: bool) -> None:
    """E-mail a technician a single-use link to enrol (pending approval)."""

    async def body(ctx: Context) -> dict[str, Any]:
        issued = await Invitations(ctx, actor()).invite(name, email, tech_name, expires)
        return render(InvitationView(issued.invitation, issued.vendor, None), ctx.now())

    data = run(config_file, body)
    emit(as_json, data, f"invitation {data['id']} e-mailed to {data['email']} for vendor"
         f" {data['vendor']}; the link works once, until {data['expires_at']:%Y-%m-%d %H:%M}"
         " UTC")


@vendor.command("invitations")
@click.argument("name", metavar="[VENDOR]", required=False)
@click.option("--state", default=None,
              type=click.Choice(["open", "expired", "pending", "approved", "rejected",
                                 "withdrawn"]),
              help="only invitations in this state")
@common()
def vendor_invitations(name: str | None, state: str | None, config_file: str | None,
                       as_json: bool) -> None:
    """List invitations (pending: technicians waiting for 'broker tech approve')."""

    async def body(ctx: Context) -> list[dict[str, Any]]:
        views = await Invitations(ctx, actor()).find(name, state)
        return [render(v, ctx.now()) for v in views]

    data = run(config_file, body)
    emit(as_json, data, lambda: table(
        [(d["id"], d["vendor"], d["email"], d["state"], d["technician"] or d["name"],
          d["expires_at"]) for d in data],
        ["id", "vendor", "email", "state", "technician", "link expires"]))


@vendor.command("withdraw-invitation")
@click.argument("invitation_id", metavar="ID", type=click.IntRange(min=1))
@common()
def vendor_withdraw_invitation(invitation_id: int, config_file: str | None,
                               as_json: bool) -> None:
    """Take back an invitation whose link was not used yet (the link stops working)."""

    async def body(ctx: Context) -> dict[str, Any]:
        return render(await Invitations(ctx, actor()).withdraw(invitation_id), ctx.now())

    data = run(config_file, body)
    emit(as_json, data, f"invitation {data['id']} to {data['email']} for vendor"
         f" {data['vendor']} withdrawn: its link no longer works")


def _decide(name: str, approve: bool, config_file: str | None, as_json: bool) -> None:
    async def body(ctx: Context) -> dict[str, Any]:
        return render(await Invitations(ctx, actor()).decide(name, approve), ctx.now())

    data = run(config_file, body)
    emit(as_json, data, f"technician {name} " + (
        "approved: it may now request access" if approve else "rejected: it stays disabled"))


@tech.command("approve")
@click.argument("name")
@common()
def tech_approve(name: str, config_file: str | None, as_json: bool) -> None:
    """Approve a technician who enrolled by invitation (enables it)."""
    _decide(name, True, config_file, as_json)


@tech.command("reject")
@click.argument("name")
@common()
def tech_reject(name: str, config_file: str | None, as_json: bool) -> None:
    """Reject a technician who enrolled by invitation (it stays disabled)."""
    _decide(name, False, config_file, as_json)
