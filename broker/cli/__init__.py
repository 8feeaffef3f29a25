"""The ``broker`` command line. Exit status: 0 ok, 1 refused or failed, 2 usage error."""

from __future__ import annotations

import difflib
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
    "tech": "onboarding:tech", "vendor": "onboarding:vendor", "approver": "people:approver",
    "staff": "staff:staff",
    "device": "devices:device", "vault": "vault:vault",
    "request": "approvals:request",  # the access module's group, plus 'request link'
    "grant": "access:grant", "breakglass": "breakglass:breakglass_command",
    "cert": "certs:cert", "session": "sessions:session",
    "recordings": "recordings:recordings", "replay": "replay:replay_command",
    "audit": "auditing:audit", "policy": "auditing:policy", "api-token": "apitokens:api_token",
    "siem": "siem:siem", "ldap": "directory:ldap",
}


# `broker --help` lists the commands by task, each task with one example to copy.
TASKS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Set-up", ("init", "migrate", "serve", "demo"),
     "broker init --dir /srv/broker --public-url https://broker.example.org:8443"),
    ("People and devices", ("vendor", "tech", "approver", "staff", "device", "vault"),
     "broker tech add alice --vendor Acme --key alice.pub --email alice@acme.example"),
    ("Access", ("request", "grant", "breakglass", "cert", "session"),
     "broker request create --tech alice --device pump-7 --for 2h --reason 'battery check'"),
    ("Evidence", ("recordings", "replay", "audit"),
     "broker recordings verify --all"),
    ("Operations", ("policy", "backup", "restore", "api-token", "siem", "ldap"),
     "broker backup --out broker-backup.tar"),
)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, names, example in TASKS:
            rows = []
            for name in names:
                command = self.get_command(ctx, name)
                if command is not None and not command.hidden:
                    rows.append((name, command.get_short_help_str(limit=200)))
            with formatter.section(title):
                formatter.write_dl(rows)
                formatter.write(f"{'':>{formatter.current_indent}}e.g. {example}\n")

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
        stderr_line(_usage_message(exc))
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


def _usage_message(exc: click.ClickException) -> str:
    """One line: the subcommand's path (stderr_line already says 'broker:'), the problem,
    and for a mistyped command the nearest one."""
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path.removeprefix("broker").strip() if ctx is not None else ""
    where = f"{path}: " if path else ""
    message = exc.format_message()
    if (ctx is not None and isinstance(ctx.command, click.Group)
            and message.startswith("No such command")):
        typed = message.split("'")[1] if message.count("'") >= 2 else ""
        near = difflib.get_close_matches(typed, ctx.command.list_commands(ctx), n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        see = " ".join(["broker", *path.split(), "--help"])
        return f"{where}no such command {typed!r}{hint}; see '{see}'"
    return f"{where}{message}"
