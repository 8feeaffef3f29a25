"""The ``broker`` command line. Exit status: 0 ok, 1 refused or failed, 2 usage error."""

from __future__ import annotations

import importlib
import os
import sys

import click

from broker.cli._base import stderr_line
from broker.errors import BrokerError

# Each command's module is imported only when that command runs: the web, API and SSH
# layers cost a second of imports that `broker tech list` should not pay.
COMMANDS = {
    "init": "admin:init", "migrate": "admin:migrate", "serve": "admin:serve",
    "demo": "admin:demo", "backup": "backup:backup_command", "restore": "backup:restore_command",
    "tech": "people:tech", "approver": "people:approver", "staff": "staff:staff",
    "device": "devices:device", "vault": "vault:vault",
    "request": "approvals:request",  # the access module's group, plus 'request link'
    "grant": "access:grant", "breakglass": "breakglass:breakglass_command",
    "cert": "certs:cert", "session": "sessions:session",
    "recordings": "recordings:recordings", "replay": "recordings:replay_command",
    "audit": "auditing:audit", "policy": "auditing:policy", "api-token": "apitokens:api_token",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(f"broker.cli.{module}"), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_file", metavar="PATH", default=None,
              help="broker.toml (default ./broker.toml, or $BROKER_CONFIG)")
@click.version_option(package_name="broker")
def cli(config_file: str | None) -> None:
    """The vendor access broker."""


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
