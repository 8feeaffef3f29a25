"""``broker recordings export|hold|prune``: what is kept, handed over or deleted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from broker.cli._base import actor, common, config_of, emit, run
from broker.cli.progress import progress
from broker.cli.recording_lookup import find_session
from broker.errors import Refused
from broker.recording.manifest import signer_for
from broker.services.context import Context


@click.command("export")
@click.argument("ident", metavar="ID")
@click.option("--out", "out", metavar="FILE.tar", required=True,
              type=click.Path(dir_okay=False, path_type=Path), help="the bundle to write")
@common()
def recordings_export(ident: str, out: Path, config_file: str | None, as_json: bool) -> None:
    """Write a self-contained evidence bundle (tar) with a standalone verify.py."""
    import hashlib

    from broker.recording.evidence import write_bundle
    from broker.services.evidence import session_records

    session = find_session(config_file, ident)
    if out.exists() or out.is_symlink():
        raise Refused(f"--out {out}: already exists, not overwriting it")
    config = config_of(config_file)
    signer = signer_for(config)

    async def body(ctx: Context) -> dict[str, Any]:
        evidence = await session_records(ctx, session.session_id,
                                         session.metadata.get("grant"))
        evidence = {"recording": session.path.name, "exported_at": ctx.now().isoformat(),
                    "exported_by": actor(), **evidence}
        try:
            with progress("exporting", as_json=as_json) as bar:
                await asyncio.to_thread(write_bundle, out, session.path, signer.public_pem(),
                                        evidence, bar)
        except FileExistsError:
            raise Refused(f"--out {out}: already exists, not overwriting it") from None
        except OSError as exc:
            raise Refused(f"--out {out}: cannot write: {exc.strerror or exc}") from None
        with out.open("rb") as bundle:
            digest = hashlib.file_digest(bundle, "sha256").hexdigest()
        await ctx.audit_alone("recording.exported", actor(), f"session:{session.session_id}",
                              out=str(out.resolve()), sha256=digest)
        return {"session": session.session_id, "out": str(out), "sha256": digest}

    result = run(config_file, body)
    emit(as_json, result, f"exported session {result['session']} to {result['out']} "
                          f"(sha256 {result['sha256']})")


@click.command("hold")
@click.argument("ident", metavar="ID")
@click.argument("state", type=click.Choice(["on", "off"]))
@common()
def recordings_hold(ident: str, state: str, config_file: str | None, as_json: bool) -> None:
    """Put a session on legal hold (prune keeps it) or release it."""
    from broker.recording.retention import set_hold

    session = find_session(config_file, ident)
    root = config_of(config_file).recordings_dir
    on = state == "on"

    async def body(ctx: Context) -> bool:
        try:
            changed = set_hold(root, session.session_id, on, actor(), ctx.now())
        except ValueError as exc:
            raise Refused(str(exc)) from None
        if changed:
            await ctx.audit_alone("recording.hold", actor(), f"session:{session.session_id}",
                                  hold=on)
        return changed

    changed = run(config_file, body)
    emit(as_json, {"session": session.session_id, "hold": on, "changed": changed},
         f"session {session.session_id}: legal hold {state}"
         + ("" if changed else " (already)"))


@click.command("prune")
@click.option("--dry-run", is_flag=True, help="only say what would be deleted")
@common()
def recordings_prune(dry_run: bool, config_file: str | None, as_json: bool) -> None:
    """Delete sealed sessions older than [recording] retain_days, except those on hold."""
    from broker.recording.retention import prune

    config = config_of(config_file)
    days = config.settings.recording.retain_days
    signer = signer_for(config)

    async def body(ctx: Context) -> Any:
        try:
            result = prune(config.recordings_dir, signer, days, ctx.now(), dry_run=dry_run)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        if not dry_run and (result.deleted or result.held):
            await ctx.audit_alone("recording.pruned", actor(), None, retain_days=days,
                                  deleted=result.deleted, held=result.held)
        return result

    result = run(config_file, body)
    verb = "would delete" if dry_run else "deleted"
    lines = [f"{verb} {s}" for s in result.deleted]
    lines += [f"kept {s} (legal hold)" for s in result.held]
    emit(as_json, {"retain_days": days, "dry_run": dry_run, "deleted": result.deleted,
                   "held": result.held},
         "\n".join(lines) or f"nothing older than {days} days")
