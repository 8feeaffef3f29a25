"""``broker init``, ``broker migrate``, ``broker serve``, ``broker demo``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import click

from broker.cli._base import config_of, stderr_line
from broker.config import DEFAULT_CONFIG, MAX_WORKERS, Config
from broker.services.setup import initialise, migrate_database, store_display_url


@click.command("init")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True, help="where broker.toml and data/ go")
@click.option("--public-url", default=None, help="URL approvers' links point to")
def init(directory: Path, public_url: str | None) -> None:
    """Create broker.toml, the database and every key (never overwrites an existing key)."""
    config = initialise(directory, public_url, click.echo)
    asyncio.run(migrate_database(config.database_url))
    click.echo(f"database ready: {store_display_url(config.database_url)}")
    for line in next_steps(config):
        click.echo(line)


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
@click.option("--worker", type=click.IntRange(0, MAX_WORKERS - 1), default=None, hidden=True,
              help="(internal) run as this worker of the node's supervisor")
@click.option("--ready-fd", type=click.IntRange(0), default=None, hidden=True,
              help="(internal) the worker reports that it serves here")
@click.option("--first", is_flag=True, hidden=True,
              help="(internal) the node's first worker of this start")
def serve(config_file: str | None, worker: int | None, ready_fd: int | None,
          first: bool) -> None:
    """Run the SSH service and the scheduler until SIGTERM."""
    from broker.server import run_event_loop, run_server

    config = config_of(config_file)
    workers = config.settings.broker.workers
    if worker is not None:
        from broker.worker import WorkerRole, run_worker

        run_event_loop(run_worker(config, WorkerRole(worker, workers, ready_fd, first)),
                       config.settings.broker.event_loop)
        return
    if workers > 1:
        from broker.supervisor import Supervisor

        code = Supervisor(config).run()
        if code:
            raise SystemExit(code)
        return
    try:
        run_event_loop(run_server(config), config.settings.broker.event_loop)
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
    from broker.demo.run import run_demo  # heavy: imported only for the demo

    asyncio.run(run_demo(directory, ssh_port, http_port))
