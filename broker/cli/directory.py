"""``broker ldap check``: is the directory reachable, and which groups does a user get."""

from __future__ import annotations

import click

from broker.cli._base import common, emit, fields, run
from broker.services.context import Context
from broker.services.directory_check import DirectoryReport, check_directory


@click.group("ldap")
def ldap() -> None:
    """The hospital's directory (LDAP / Active Directory) for approver groups and roles."""


@ldap.command("check")
@click.option("--user", "name", metavar="NAME",
              help="also find this user and show their groups and staff role")
@click.option("--email", metavar="E",
              help="their e-mail address for {email} (default: the registered approver's)")
@common()
def ldap_check(name: str | None, email: str | None, config_file: str | None,
               as_json: bool) -> None:
    """Connect and bind to [ldap] url; with --user, resolve that user's groups."""

    async def body(ctx: Context) -> DirectoryReport:
        return await check_directory(ctx, name, email)

    report = run(config_file, body)

    def human() -> None:
        click.echo(report.connection)
        if report.unmapped_groups:
            click.echo(f"warning: no [ldap.groups] entry for {', '.join(report.unmapped_groups)}"
                       " (named by a policy): nobody can approve for them")
        if report.name is None:
            return
        fields([
            ("user", report.name + ("" if report.registered_approver
                                    else " (not a registered approver)")),
            ("e-mail", report.email),
            ("entry", report.dn),
            ("directory groups", "; ".join(report.directory_groups) or None),
            ("approver groups", list(report.approver_groups) or "none ([ldap.groups])"),
            ("staff role", report.role or "none ([ldap.roles])"),
        ])

    emit(as_json, report.to_json(), human)
