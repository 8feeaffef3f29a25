"""``broker tech ...`` and ``broker approver ...``."""

from __future__ import annotations

from pathlib import Path

import click

from broker.cli._base import actor, common, emit, fields, run, table
from broker.cli.totp import totp
from broker.cli.vendors import end_option
from broker.domain.vendors import shown_end
from broker.errors import UsageError
from broker.services import render
from broker.services.context import Context
from broker.services.directory import Directory, TechnicianView, parse_public_keys
from broker.services.vendors import enable_technician, set_expiry
from broker.store.models import Approver


@click.group("tech")
def tech() -> None:
    """Vendor technicians."""


tech.add_command(totp)


@tech.command("add")
@click.argument("name")
@click.option("--vendor", required=True, help="the technician's employer")
@click.option("--key", "key_file", required=True, metavar="PUBKEY_FILE",
              help="OpenSSH public key file (one or more keys)")
@click.option("--email", default=None, help="where decisions on their requests are sent")
@click.option("--expires", default=None, metavar="DATE",
              help="last day of access (YYYY-MM-DD, UTC) or an ISO 8601 end time")
@common()
def tech_add(name: str, vendor: str, key_file: str, email: str | None, expires: str | None,
             config_file: str | None, as_json: bool) -> None:
    """Register a technician and their SSH public key.

    --vendor names a registered vendor ('broker vendor add'); an unknown name is registered
    on the spot with no mail domains and no contract end. When the vendor has domains,
    --email must be in one of them."""
    expires_at = end_option("--expires", expires)
    try:
        text = Path(key_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--key {key_file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--key {key_file}: not a text file (expected an OpenSSH public key)"
                         ) from None
    keys = parse_public_keys(text, key_file)
    directory: list[Directory] = []

    async def body(ctx: Context) -> TechnicianView:
        directory.append(Directory(ctx, actor()))
        return await directory[0].add_technician(name, vendor, keys, email, expires_at)

    view = run(config_file, body)
    registered = directory[0].vendor_created
    emit(as_json, render.technician(view),
         f"technician {name} added ({view.technician.vendor}"
         + (", a vendor registered just now" if registered else "") + f"), {len(keys)} key(s): "
         + ", ".join(k.fingerprint for k in view.keys))


@tech.command("list")
@common()
def tech_list(config_file: str | None, as_json: bool) -> None:
    """List technicians."""
    views = run(config_file, lambda ctx: Directory(ctx, actor()).technicians())
    data = [render.technician(v) for v in views]
    emit(as_json, data, lambda: table(
        [(d["name"], d["vendor"], d["email"], len(d["keys"]), d["state"]) for d in data],
        ["name", "vendor", "email", "keys", "state"]))


@tech.command("show")
@click.argument("name")
@common()
def tech_show(name: str, config_file: str | None, as_json: bool) -> None:
    """Show one technician."""
    data = render.technician(run(config_file, lambda ctx: Directory(ctx, actor()).technician(name)))
    emit(as_json, data, lambda: fields(
        [("name", data["name"]), ("vendor", data["vendor"]), ("email", data["email"]),
         ("state", data["state"]), ("totp", data["totp"]),
         ("expires", data["expires_at"]), ("last login", data["last_login_at"] or "never"),
         ("created", data["created_at"])]
        + [("key", f"{k['fingerprint']} {k['comment'] or ''}".strip()) for k in data["keys"]]))


@tech.command("disable")
@click.argument("name")
@common()
def tech_disable(name: str, config_file: str | None, as_json: bool) -> None:
    """Disable a technician: no new requests, no new sessions."""
    run(config_file, lambda ctx: Directory(ctx, actor()).disable_technician(name))
    emit(as_json, {"name": name, "disabled": True}, f"technician {name} disabled")


@tech.command("expire")
@click.argument("name")
@click.argument("date", metavar="DATE|never")
@common()
def tech_expire(name: str, date: str, config_file: str | None, as_json: bool) -> None:
    """Set the technician's last day of access (YYYY-MM-DD, UTC), or 'never'.

    On that date the technician is refused and the scheduler disables them
    (audited technician.expired); a date in the past refuses them now."""
    end = None if date.strip().lower() == "never" else end_option("DATE", date)
    run(config_file, lambda ctx: set_expiry(ctx, actor(), name, end))
    emit(as_json, {"name": name, "expires_at": end},
         f"technician {name} " + (f"expires after {shown_end(end)}" if end else "never expires"))


@tech.command("enable")
@click.argument("name")
@common()
def tech_enable(name: str, config_file: str | None, as_json: bool) -> None:
    """Enable a disabled technician (e.g. after inactivity); restarts the inactivity clock."""
    run(config_file, lambda ctx: enable_technician(ctx, actor(), name))
    emit(as_json, {"name": name, "disabled": False}, f"technician {name} enabled")


@click.group("approver")
def approver() -> None:
    """Hospital approvers."""


@approver.command("add")
@click.argument("name")
@click.option("--email", required=True, help="where approval links are sent")
@click.option("--group", "groups", multiple=True, help="approval group (repeatable)")
@click.option("--same-person-as", "same_as", multiple=True, metavar="TECH",
              help="technician account this person also holds: they may never approve or"
                   " review that technician's access (repeatable)")
@common()
def approver_add(name: str, email: str, groups: tuple[str, ...], same_as: tuple[str, ...],
                 config_file: str | None, as_json: bool) -> None:
    """Register an approver and their groups.

    An approver never decides a request of a technician who is the same person: same name,
    an e-mail address reaching the same mailbox (case and +tag ignored), or a link made
    with --same-person-as or 'broker approver link'."""
    row = run(config_file, lambda ctx: Directory(ctx, actor()).add_approver(
        name, email, groups, same_as))
    emit(as_json, render.approver(row, sorted(set(groups)), sorted(set(same_as))),
         f"approver {name} added" + (f" (groups: {', '.join(sorted(set(groups)))})"
                                     if groups else "")
         + (f"; same person as technician {', '.join(sorted(set(same_as)))}"
            if same_as else ""))


@approver.command("link")
@click.argument("name")
@click.option("--tech", required=True, metavar="TECH",
              help="the technician account that is the same person as approver NAME")
@common()
def approver_link(name: str, tech: str, config_file: str | None, as_json: bool) -> None:
    """Record that approver NAME and technician TECH are one person.

    From then on NAME may not approve, deny or review TECH's requests and grants (on the
    approval page, the staff portal, the API or the CLI); each attempt is refused and
    audited as approval.refused (reason self-approval)."""
    run(config_file, lambda ctx: Directory(ctx, actor()).link_same_person(name, tech))
    emit(as_json, {"approver": name, "same_person_as": tech},
         f"approver {name} linked to technician {tech}: one person")


@approver.command("list")
@common()
def approver_list(config_file: str | None, as_json: bool) -> None:
    """List approvers."""

    async def body(ctx: Context) -> tuple[list[tuple[Approver, list[str]]], dict[str, list[str]]]:
        directory = Directory(ctx, actor())
        return await directory.approvers(), await directory.same_person_links()

    rows, links = run(config_file, body)
    data = [render.approver(a, g, links.get(a.name, [])) for a, g in rows]
    emit(as_json, data, lambda: table(
        [(d["name"], d["email"], d["groups"], d["same_person_as"], d["disabled"])
         for d in data],
        ["name", "email", "groups", "same person as", "disabled"]))
