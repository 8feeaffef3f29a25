"""``broker tech ...`` and ``broker approver ...``."""

from __future__ import annotations

from pathlib import Path

import click

from broker.cli import _render as render
from broker.cli._base import actor, common, emit, fields, run, table
from broker.cli.certs import totp
from broker.errors import UsageError
from broker.services.directory import Directory, parse_public_keys


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
@common()
def tech_add(name: str, vendor: str, key_file: str, email: str | None,
             config_file: str | None, as_json: bool) -> None:
    """Register a technician and their SSH public key."""
    try:
        text = Path(key_file).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--key {key_file}: cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--key {key_file}: not a text file (expected an OpenSSH public key)"
                         ) from None
    keys = parse_public_keys(text, key_file)
    view = run(config_file, lambda ctx: Directory(ctx, actor()).add_technician(
        name, vendor, keys, email))
    emit(as_json, render.technician(view),
         f"technician {name} added ({vendor}), {len(keys)} key(s): "
         + ", ".join(k.fingerprint for k in view.keys))


@tech.command("list")
@common()
def tech_list(config_file: str | None, as_json: bool) -> None:
    """List technicians."""
    views = run(config_file, lambda ctx: Directory(ctx, actor()).technicians())
    data = [render.technician(v) for v in views]
    emit(as_json, data, lambda: table(
        [(d["name"], d["vendor"], d["email"], len(d["keys"]), d["disabled"]) for d in data],
        ["name", "vendor", "email", "keys", "disabled"]))


@tech.command("show")
@click.argument("name")
@common()
def tech_show(name: str, config_file: str | None, as_json: bool) -> None:
    """Show one technician."""
    data = render.technician(run(config_file, lambda ctx: Directory(ctx, actor()).technician(name)))
    emit(as_json, data, lambda: fields(
        [("name", data["name"]), ("vendor", data["vendor"]), ("email", data["email"]),
         ("disabled", data["disabled"]), ("totp", data["totp"]),
         ("created", data["created_at"])]
        + [("key", f"{k['fingerprint']} {k['comment'] or ''}".strip()) for k in data["keys"]]))


@tech.command("disable")
@click.argument("name")
@common()
def tech_disable(name: str, config_file: str | None, as_json: bool) -> None:
    """Disable a technician: no new requests, no new sessions."""
    run(config_file, lambda ctx: Directory(ctx, actor()).disable_technician(name))
    emit(as_json, {"name": name, "disabled": True}, f"technician {name} disabled")


@click.group("approver")
def approver() -> None:
    """Hospital approvers."""


@approver.command("add")
@click.argument("name")
@click.option("--email", required=True, help="where approval links are sent")
@click.option("--group", "groups", multiple=True, help="approval group (repeatable)")
@common()
def approver_add(name: str, email: str, groups: tuple[str, ...], config_file: str | None,
                 as_json: bool) -> None:
    """Register an approver and their groups."""
    row = run(config_file, lambda ctx: Directory(ctx, actor()).add_approver(name, email, groups))
    emit(as_json, render.approver(row, sorted(set(groups))),
         f"approver {name} added" + (f" (groups: {', '.join(sorted(set(groups)))})"
                                     if groups else ""))


@approver.command("list")
@common()
def approver_list(config_file: str | None, as_json: bool) -> None:
    """List approvers."""
    rows = run(config_file, lambda ctx: Directory(ctx, actor()).approvers())
    data = [render.approver(a, g) for a, g in rows]
    emit(as_json, data, lambda: table(
        [(d["name"], d["email"], d["groups"], d["disabled"]) for d in data],
        ["name", "email", "groups", "disabled"]))
