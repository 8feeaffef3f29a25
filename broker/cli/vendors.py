"""``broker vendor ...``: technicians' employers, their mail domains and contract ends."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from broker.cli._base import actor, common, emit, fields, run, table
from broker.domain.errors import InvariantViolation
from broker.domain.vendors import parse_end, shown_end
from broker.errors import UsageError
from broker.services.context import Context
from broker.services.vendors import Vendors, VendorView, technician_state


def end_option(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_end(option, text)
    except InvariantViolation as exc:
        raise UsageError(str(exc)) from None


def _end(moment: datetime | None) -> str | None:
    return shown_end(moment) if moment is not None else None


def render(view: VendorView, now: datetime) -> dict[str, Any]:
    v = view.vendor
    contract_over = v.contract_end is not None and v.contract_end <= now
    return {"id": v.id, "name": v.name, "domains": v.domains, "contact": v.contact,
            "contract_until": _end(v.contract_end),
            "contract_end": v.contract_end, "disabled": v.disabled,
            "state": "disabled" if v.disabled else "contract-ended" if contract_over
            else "enabled", "created_at": v.created_at,
            "technicians": [{"name": t.name, "email": t.email,
                             "state": technician_state(now, t, v),
                             "last_login_at": t.last_login_at,
                             "expires": _end(t.expires_at), "expires_at": t.expires_at}
                            for t in view.technicians]}


@click.group("vendor")
def vendor() -> None:
    """Vendors: technicians' companies (mail domains, contract end, on/off for all)."""


@vendor.command("add")
@click.argument("name")
@click.option("--domain", "domains", multiple=True, metavar="DOMAIN",
              help="mail domain of its technicians, e.g. vendor.example (repeatable; none:"
                   " any address)")
@click.option("--contract-until", default=None, metavar="DATE",
              help="last day of the contract (YYYY-MM-DD, UTC) or an ISO 8601 end time")
@click.option("--contact", default=None, metavar="EMAIL", help="the vendor's contact address")
@common()
def vendor_add(name: str, domains: tuple[str, ...], contract_until: str | None,
               contact: str | None, config_file: str | None, as_json: bool) -> None:
    """Register a vendor."""
    end = end_option("--contract-until", contract_until)

    async def body(ctx: Context) -> tuple[dict[str, Any], datetime]:
        row = await Vendors(ctx, actor()).add(name, domains, end, contact)
        return render(VendorView(row, []), ctx.now()), ctx.now()

    data, _ = run(config_file, body)
    emit(as_json, data, f"vendor {data['name']} added"
         + (f" (domains: {', '.join(data['domains'])})" if data["domains"] else "")
         + (f", contract until {data['contract_until']}" if data["contract_until"] else ""))


@vendor.command("list")
@common()
def vendor_list(config_file: str | None, as_json: bool) -> None:
    """List vendors."""

    async def body(ctx: Context) -> list[dict[str, Any]]:
        return [render(v, ctx.now()) for v in await Vendors(ctx, actor()).all()]

    data = run(config_file, body)
    emit(as_json, data, lambda: table(
        [(d["name"], d["domains"], d["contract_until"], d["state"], len(d["technicians"]))
         for d in data], ["name", "domains", "contract until", "state", "technicians"]))


@vendor.command("show")
@click.argument("name")
@common()
def vendor_show(name: str, config_file: str | None, as_json: bool) -> None:
    """Show a vendor and its technicians (last login, expiry, state)."""

    async def body(ctx: Context) -> dict[str, Any]:
        return render(await Vendors(ctx, actor()).show(name), ctx.now())

    data = run(config_file, body)

    def human() -> None:
        fields([("name", data["name"]), ("domains", data["domains"]),
                ("contact", data["contact"]), ("contract until", data["contract_until"]),
                ("state", data["state"]), ("created", data["created_at"])])
        click.echo("")
        table([(t["name"], t["email"], t["state"], t["last_login_at"] or "never",
                t["expires"]) for t in data["technicians"]],
              ["technician", "email", "state", "last login", "expires"])

    emit(as_json, data, human)


@vendor.command("disable")
@click.argument("name")
@common()
def vendor_disable(name: str, config_file: str | None, as_json: bool) -> None:
    """Refuse all the vendor's technicians now; their live sessions are cut."""
    run(config_file, lambda ctx: Vendors(ctx, actor()).set_disabled(name, True))
    emit(as_json, {"name": name, "disabled": True},
         f"vendor {name} disabled: its technicians are refused and their sessions cut")


@vendor.command("enable")
@click.argument("name")
@common()
def vendor_enable(name: str, config_file: str | None, as_json: bool) -> None:
    """Let the vendor's technicians in again (each still needs a grant)."""
    run(config_file, lambda ctx: Vendors(ctx, actor()).set_disabled(name, False))
    emit(as_json, {"name": name, "disabled": False}, f"vendor {name} enabled")


@vendor.command("contract")
@click.argument("name")
@click.argument("date", metavar="DATE|none")
@common()
def vendor_contract(name: str, date: str, config_file: str | None, as_json: bool) -> None:
    """Set the contract's last day (YYYY-MM-DD, UTC), or 'none' for no end."""
    end = None if date.strip().lower() == "none" else end_option("DATE", date)
    run(config_file, lambda ctx: Vendors(ctx, actor()).set_contract(name, end))
    emit(as_json, {"name": name, "contract_until": _end(end), "contract_end": end},
         f"vendor {name}: contract " + (f"until {_end(end)}" if end else "without an end"))
