"""``broker staff add|list|disable`` and ``broker staff totp enroll``: web UI accounts."""

from __future__ import annotations

import os

import click

from broker.cli._base import actor, common, emit, run, table
from broker.cli.totp import show_enrollment
from broker.errors import UsageError
from broker.services.staff_accounts import ROLES, StaffAccounts, describe


@click.group("staff")
def staff() -> None:
    """Staff accounts for the web UI (approver, auditor, admin)."""


@staff.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(ROLES),
              help="approver: decides requests; auditor: reads, watches, kills; admin: all")
@click.option("--approver", "approver", default=None, metavar="NAME",
              help="the registered approver this account decides as (approver/admin roles)")
@click.option("--password-env", "password_env", required=True, metavar="VAR",
              help="name of the environment variable holding the password (never an argument)")
@common()
def staff_add(name: str, role: str, approver: str | None, password_env: str,
              config_file: str | None, as_json: bool) -> None:
    """Add a staff account; enroll TOTP next with 'broker staff totp enroll NAME'."""
    password = os.environ.get(password_env)
    if password is None:
        raise UsageError(f"--password-env {password_env}: that environment variable is not set")
    user = run(config_file, lambda ctx: StaffAccounts(ctx, actor()).add(
        name, role, password, approver))
    emit(as_json, {"id": user.id, **describe(user)},
         f"staff user {name} added ({role}"
         + (f", decides as approver {approver}" if approver else "")
         + f"); enroll a second factor with: broker staff totp enroll {name}")


@staff.command("list")
@common()
def staff_list(config_file: str | None, as_json: bool) -> None:
    """List staff accounts."""
    users = run(config_file, lambda ctx: StaffAccounts(ctx, actor()).users())
    data = [describe(u) for u in users]
    emit(as_json, data, lambda: table(
        [(d["name"], d["role"], d["approver"], d["totp"], d["disabled"], d["sign_in"])
         for d in data],
        ["name", "role", "approver", "totp", "disabled", "sign-in"]))


@staff.command("disable")
@click.argument("name")
@common()
def staff_disable(name: str, config_file: str | None, as_json: bool) -> None:
    """Disable a staff account and end its web sessions."""
    run(config_file, lambda ctx: StaffAccounts(ctx, actor()).disable(name))
    emit(as_json, {"name": name, "disabled": True},
         f"staff user {name} disabled; their web sessions are ended")


@click.group("totp")
def totp() -> None:
    """TOTP second factor for the web UI sign-in."""


@totp.command("enroll")
@click.argument("name")
@common()
def staff_totp_enroll(name: str, config_file: str | None, as_json: bool) -> None:
    """Give a staff account a new TOTP secret (replacing any old one); show it as a QR code."""
    secret, uri = run(config_file, lambda ctx: StaffAccounts(ctx, actor()).enroll_totp(name))
    if as_json:
        emit(True, {"staff": name, "uri": uri, "secret": secret})
        return
    show_enrollment(uri, secret, f"staff user {name}")


staff.add_command(totp)
