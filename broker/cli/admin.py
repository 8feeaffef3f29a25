"""``broker init``, ``broker migrate``, ``broker serve``, ``broker demo``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import click

from broker.approvals.notify.channels import create_webhook_secret
from broker.cli._base import config_of, stderr_line
from broker.config import DEFAULT_CONFIG, Config, load_config, render_default_config
from broker.credentials.files import write_public
from broker.credentials.keys import KeyPaths, create_keys
from broker.store.engine import Store


@click.command("init")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True, help="where broker.toml and data/ go")
@click.option("--public-url", default=None, help="URL approvers' links point to")
def init(directory: Path, public_url: str | None) -> None:
    """Create broker.toml, the database and every key (never overwrites an existing key)."""
    config = initialise(directory, public_url, click.echo)
    asyncio.run(migrate_database(config.database_url))
    click.echo(f"database ready: {Store(config.database_url).display_url}")
    for line in next_steps(config):
        click.echo(line)


def initialise(directory: Path, public_url: str | None = None,
               say: Callable[[str], None] = lambda _text: None) -> Config:
    """Write broker.toml and create every missing key and directory (the database is
    created by :func:`migrate_database`)."""
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / DEFAULT_CONFIG
    url = public_url or f"https://{socket.getfqdn() or 'localhost'}:8443"
    if write_public(config_file, render_default_config(url).encode()):
        say(f"wrote {config_file}")
    else:
        say(f"kept existing {config_file}")
    config = load_config(config_file)
    kept = config.settings.broker.public_url
    if public_url is not None and public_url.rstrip("/") != kept.rstrip("/"):
        say(f"note: public_url stays {kept!r} (from {config_file}); to change it, edit"
            f" [broker] public_url there or set BROKER_BROKER_PUBLIC_URL")
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config.recordings_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    config.policy_dir.mkdir(parents=True, exist_ok=True)
    hostname = urlsplit(config.settings.broker.public_url).hostname or "localhost"
    for path in create_keys(KeyPaths.of(config), hostname):
        say(f"created {path}")
    if (webhook_key := create_webhook_secret(config)) is not None:
        say(f"created {webhook_key}")
    return config


LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def next_steps(config: Config) -> list[str]:
    """What a new admin does after ``broker init``, with the --config of this install."""
    where = f" --config {config.source}" if Path(config.source).resolve() != (
        Path.cwd() / DEFAULT_CONFIG).resolve() else ""
    lines = []
    host = urlsplit(config.settings.broker.public_url).hostname or ""
    if host in LOCAL_HOSTS or host.endswith(".localdomain") or "." not in host:
        lines.append(f"warning: public_url is {config.settings.broker.public_url!r}: approval"
                     " links in e-mails will not open on an approver's phone; set [broker]"
                     " public_url to the name people reach this broker by")
    lines += [
        "next steps:",
        f"  1. a staff account for the portal: broker{where} staff add NAME --role admin"
        " --password-env PW",
        f"  2. approvers: broker{where} approver add NAME --email E --group biomed",
        f"  3. technicians: broker{where} tech add NAME --vendor ORG --key KEY.pub --email E",
        f"  4. devices: broker{where} device add NAME --host H --user U --password-env VAR",
        f"  5. policies: put YAML files in {config.policy_dir} (see policies/ in the source),"
        f" then: broker{where} policy check",
        f"  6. run it: broker{where} serve",
    ]
    return lines


async def migrate_database(url: str) -> None:
    store = Store(url)
    try:
        await store.migrate()
    finally:
        await store.close()


@click.command("migrate")
@click.option("--config", "config_file", metavar="PATH", default=None,
              help="broker.toml to use (default ./broker.toml or $BROKER_CONFIG)")
def migrate(config_file: str | None) -> None:
    """Bring the database schema up to date (Alembic)."""
    config = config_of(config_file)
    asyncio.run(migrate_database(config.database_url))
    click.echo("database schema is current")


@click.command("serve")
@click.option("--config", "config_file", metavar="PATH", default=None,
              help="broker.toml to use (default ./broker.toml or $BROKER_CONFIG)")
def serve(config_file: str | None) -> None:
    """Run the SSH service and the scheduler until SIGTERM."""
    from broker.server import run_event_loop, run_server

    config = config_of(config_file)
    try:
        run_event_loop(run_server(config))
    except KeyboardInterrupt:
        stderr_line("stopped")


@click.command("demo")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="keep the demo here instead of a temporary directory")
@click.option("--ssh-port", type=int, default=2222, show_default=True,
              help="SSH port for technicians (0: any free port)")
@click.option("--http-port", type=int, default=8443, show_default=True,
              help="HTTPS port for the portal (0: any free port)")
def demo(directory: Path | None, ssh_port: int, http_port: int) -> None:
    """A broker with a simulated device, and a walk-through to paste."""
    from broker.demo.run import run_demo

    asyncio.run(run_demo(directory, ssh_port, http_port))
