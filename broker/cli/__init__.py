"""The ``broker`` command line. Exit status: 0 ok, 1 refused or failed, 2 usage error."""

from __future__ import annotations

import os
import sys

import click

import broker.cli.approvals  # noqa: F401  (adds 'broker request link')
from broker.cli import (
    access,
    admin,
    apitokens,
    auditing,
    certs,
    devices,
    people,
    recordings,
    sessions,
)
from broker.cli._base import stderr_line
from broker.cli.backup import backup_command, restore_command
from broker.cli.breakglass import breakglass_command
from broker.cli.staff import staff as staff_group
from broker.cli.vault import vault as vault_group
from broker.errors import BrokerError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_file", metavar="PATH", default=None,
              help="broker.toml (default ./broker.toml, or $BROKER_CONFIG)")
@click.version_option(package_name="broker")
def cli(config_file: str | None) -> None:
    """The vendor access broker."""


for command in (admin.init, admin.migrate, admin.serve, admin.demo, people.tech,
                people.approver, devices.device, access.request, access.grant, auditing.audit,
                auditing.policy, recordings.recordings, recordings.replay_command, certs.cert,
                sessions.session):
    cli.add_command(command)
for command in (breakglass_command, backup_command, restore_command):
    cli.add_command(command)
cli.add_command(apitokens.api_token)
cli.add_command(vault_group)
cli.add_command(staff_group)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="broker", standalone_mode=False)
    except click.exceptions.Abort:
        stderr_line("aborted")
        sys.exit(1)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(2)
    except click.ClickException as exc:
        command_ctx = getattr(exc, "ctx", None)
        where = f"{command_ctx.command_path}: " if command_ctx is not None else ""
        stderr_line(f"{where}{exc.format_message()}")
        sys.exit(exc.exit_code)
    except BrokerError as exc:
        stderr_line(str(exc))
        sys.exit(exc.exit_status)
    except Exception as exc:
        if os.environ.get("BROKER_DEBUG"):
            raise
        stderr_line(f"internal error: {type(exc).__name__}: {exc} "
                    "(a bug: rerun with BROKER_DEBUG=1 and report the traceback)")
        sys.exit(1)
    sys.exit(0)
