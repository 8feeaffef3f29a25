"""``broker backup --out FILE`` and ``broker restore FILE``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from broker.cli._base import common, config_of, emit
from broker.cli.progress import progress
from broker.services import backup as service
from broker.services import restore as restoring

NOT_INCLUDED = ("Recordings are NOT included: copy the recordings directory (sessions with"
                " their signed manifests) separately.")


@click.command("backup")
@click.option("--out", "out", required=True, metavar="FILE", help="the archive to write (new)")
@common()
def backup_command(out: str, config_file: str | None, as_json: bool) -> None:
    """Write broker.toml, the keys under data/, the policies and a consistent database
    snapshot (SQLite online backup, or pg_dump for PostgreSQL) with a SHA-256 manifest to a
    new tar file readable only by you.

    Recordings are NOT included: copy the recordings directory (sessions with their signed
    manifests) separately.
    """
    config = config_of(config_file)
    with progress("backing up", as_json=as_json) as bar:
        report = asyncio.run(service.backup(config, Path(out), progress=bar))
    audit = report.audit
    data = {"path": str(report.path), "database": report.database, "files": report.files,
            "audit": None if audit is None else {"rows": audit.rows, "ok": audit.ok,
                                                 "problems": audit.problems},
            "not_included": ["recordings", *report.not_included]}

    def human() -> None:
        click.echo(f"backup written to {report.path} (mode 0600): {len(report.files)} files,"
                   f" {report.database} database")
        if audit is not None:
            click.echo(f"audit chain: {audit.rows} rows, " + (
                "intact" if audit.ok else f"BROKEN ({len(audit.problems)} problem(s); the"
                " backup will not pass restore's check)"))
        for path in report.not_included:
            click.echo(f"not included (outside the broker directory): {path}")
        click.echo(NOT_INCLUDED)

    emit(as_json, data, human)


@click.command("restore")
@click.argument("source", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dir", "directory", default=".", show_default=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="where to restore: a directory with no broker in it yet")
@click.option("--json", "as_json", is_flag=True, help="print machine-readable JSON")
def restore_command(source: Path, directory: Path, as_json: bool) -> None:
    """Restore a backup into an empty directory (and, for PostgreSQL, an empty database):
    every SHA-256 is checked before anything is written, nothing is overwritten, and the
    audit chain of the restored database must verify.

    Recordings are not in a backup: copy them back separately.
    """
    with progress("restoring", as_json=as_json) as bar:
        report = asyncio.run(restoring.restore(source, directory, progress=bar))
    emit(as_json, {"directory": str(report.directory), "database": report.database,
                   "files": report.files, "audit": {"rows": report.audit.rows, "ok": True}},
         f"restored {len(report.files)} files and the {report.database} database into"
         f" {report.directory}; audit chain: {report.audit.rows} rows, intact."
         f" {NOT_INCLUDED}")
