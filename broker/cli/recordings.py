"""``broker recordings list|search|show|verify|export|pubkey|hold|prune`` and ``broker replay``."""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from broker.cli._base import actor, common, config_of, emit, fields, run, since, table
from broker.cli.progress import progress
from broker.domain.ids import IdError, by_prefix
from broker.errors import NotFound, Refused, UsageError
from broker.recording import (
    RecordingError,
    SessionInfo,
    Signer,
    iter_sessions,
    read_cast,
    replay,
    verify_all,
    verify_session,
)
from broker.recording.files import REPLAYED, recorded_files
from broker.recording.logtext import har_lines, log_lines
from broker.recording.manifest import SIGNATURE_FILE, signer_for
from broker.recording.player import play_in_terminal
from broker.services.context import Context
from broker.services.progress import SILENT, Progress


@click.group("recordings")
def recordings() -> None:
    """Recorded sessions."""


def _info(info: SessionInfo) -> dict[str, Any]:
    meta = info.metadata
    return {"id": info.session_id, "directory": str(info.path),
            "technician": meta.get("technician"), "vendor": meta.get("vendor"),
            "device": meta.get("device"), "grant": meta.get("grant"),
            "client": meta.get("client"), "started_at": info.started_at,
            "ended_at": info.ended_at, "end_reason": info.end_reason,
            "files": sorted(p.name for p in info.path.iterdir() if p.is_file())}


def _sessions(config_file: str | None) -> list[SessionInfo]:
    try:
        return list(iter_sessions(config_of(config_file).recordings_dir))
    except RecordingError as exc:
        raise UsageError(str(exc)) from None


def find_session(config_file: str | None, ident: str) -> SessionInfo:
    """A recorded session by its ID, its directory name, or a unique prefix of either."""
    sessions = _sessions(config_file)
    named = [(s.session_id, s) for s in sessions] + [(s.path.name, s) for s in sessions]
    try:
        return by_prefix(ident, named, "recorded session")
    except IdError as exc:
        raise NotFound(f"{exc} (see 'broker recordings list')") from None


@recordings.command("list")
@click.option("--tech", default=None, help="technician name")
@click.option("--device", "device_name", default=None, help="device name")
@click.option("--vendor", default=None, help="the technician's vendor")
@click.option("--grant", "grant_id", type=int, default=None, help="grant ID")
@click.option("--since", "since_text", metavar="S", default=None,
              help="started at or after (ISO 8601, or a duration like 7d: that long ago)")
@click.option("--until", "until_text", metavar="S", default=None,
              help="started before (ISO 8601, or a duration like 1d: that long ago)")
@common()
def recordings_list(tech: str | None, device_name: str | None, vendor: str | None,
                    grant_id: int | None, since_text: str | None, until_text: str | None,
                    config_file: str | None, as_json: bool) -> None:
    """List recorded sessions, oldest first."""
    now = datetime.now(UTC)
    start, end = since("--since", since_text, now), since("--until", until_text, now)
    config = config_of(config_file)
    holds = _holds(config.recordings_dir)
    data = []
    for s in _sessions(config_file):
        meta = s.metadata
        if ((tech is not None and meta.get("technician") != tech)
                or (device_name is not None and meta.get("device") != device_name)
                or (vendor is not None and meta.get("vendor") != vendor)
                or (grant_id is not None and str(meta.get("grant")) != str(grant_id))
                or (start is not None and s.started_at < start)
                or (end is not None and s.started_at >= end)):
            continue
        data.append({**_info(s), "sealed": (s.path / SIGNATURE_FILE).is_file(),
                     "hold": s.session_id in holds})
    emit(as_json, data, lambda: table(
        [(d["id"], d["started_at"], d["technician"], d["vendor"], d["device"], d["grant"],
          d["end_reason"] or "live", d["sealed"], d["hold"]) for d in data],
        ["id", "started", "technician", "vendor", "device", "grant", "ended", "sealed",
         "hold"]))


def _holds(root: Path) -> dict[str, dict[str, Any]]:
    from broker.recording.retention import read_holds

    try:
        return read_holds(root)
    except ValueError as exc:
        raise Refused(str(exc)) from None


@recordings.command("search")
@click.argument("text")
@common()
def recordings_search(text: str, config_file: str | None, as_json: bool) -> None:
    """Find sessions whose terminal, exec or file-transfer logs contain TEXT (any case)."""
    from broker.recording.search import format_offset, search

    if not text:
        raise UsageError("TEXT: give something to search for")
    root = config_of(config_file).recordings_dir
    if as_json:
        try:
            hits = [hit.as_dict() for hit in search(root, text)]
        except RecordingError as exc:
            raise Refused(str(exc)) from None
        emit(True, hits)
        return
    try:
        for hit in search(root, text):
            click.echo(f"{hit.session}  {format_offset(hit.offset)}  "
                       f"{hit.technician or '?'}@{hit.device or '?'}  {hit.file}  "
                       f"{hit.snippet}")
    except RecordingError as exc:
        raise Refused(str(exc)) from None


@recordings.command("show")
@click.argument("ident", metavar="ID")
@common()
def recordings_show(ident: str, config_file: str | None, as_json: bool) -> None:
    """Show a recorded session: metadata, files, verification, request and approvals."""
    from broker.services.evidence import session_records

    session = find_session(config_file, ident)
    config = config_of(config_file)
    problems = verify_session(session.path, signer_for(config).public_key)

    async def body(ctx: Context) -> dict[str, Any]:
        return await session_records(ctx, session.session_id, session.metadata.get("grant"))

    records = run(config_file, body)
    request = records["request"]
    d = {**_info(session), "verified": not problems, "problems": problems,
         "hold": session.session_id in _holds(config.recordings_dir),
         "request": request, "approvals": records["approvals"],
         "in_database": records["session"] is not None}

    def human() -> None:
        pairs: list[tuple[str, Any]] = [
            ("session", d["id"]), ("technician", f"{d['technician']} ({d['vendor']})"),
            ("device", d["device"]), ("grant", d["grant"]), ("client", d["client"]),
            ("started", d["started_at"]), ("ended", d["ended_at"]),
            ("end reason", d["end_reason"]), ("directory", d["directory"]),
            ("verify", "ok" if not problems else "; ".join(problems)),
            ("legal hold", d["hold"])]
        if not d["in_database"]:
            pairs.append(("database", "no session row (recording only)"))
        if request is not None:
            pairs += [("request", request["id"]), ("reason", request["reason"]),
                      ("requested", _hours(request["duration_s"])),
                      ("requested at", request["created_at"])]
        pairs += [("approval", f"{a['approver']} {a['decision']} at {a['at']}"
                   + (f": {a['comment']}" if a["comment"] else ""))
                  for a in d["approvals"]]
        pairs += [("file", name) for name in d["files"]]
        fields(pairs)

    emit(as_json, d, human)


def _hours(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


@recordings.command("verify")
@click.argument("ident", metavar="ID", required=False)
@click.option("--all", "all_sessions", is_flag=True,
              help="every session, and the chain linking them")
@common()
def recordings_verify(ident: str | None, all_sessions: bool, config_file: str | None,
                      as_json: bool) -> None:
    """Check a session's signed manifest: prints ok, or exactly what was altered."""
    if (ident is None) == (not all_sessions):
        raise UsageError("give either a session ID or --all (exactly one)")
    config = config_of(config_file)
    public_key = Signer.from_config(config).public_key
    if ident is not None:
        session = find_session(config_file, ident)
        problems = verify_session(session.path, public_key)
        emit(as_json, {"session": session.session_id, "directory": str(session.path),
                       "ok": not problems, "problems": problems},
             "\n".join(problems) or "ok")
        if problems:
            raise Refused(f"session {session.session_id} does not verify: {len(problems)} "
                          f"problem{'s' if len(problems) > 1 else ''}")
        return
    with progress("verifying", as_json=as_json, count=True) as bar:
        results = run(config_file, lambda ctx: _verify_all(ctx, public_key, bar))
    bad = {s: p for s, p in results.items() if p}
    size = _bytes_under(config.recordings_dir)
    emit(as_json, {"ok": not bad, "bytes": size,
                   "sessions": [{"session": s, "ok": not p, "problems": p}
                                for s, p in results.items()]},
         "\n".join(f"{s}: {line}" for s, p in bad.items() for line in p)
         or f"ok: {len(results)} sessions, {_human_bytes(size)}, chain intact")
    if bad:
        raise Refused(f"{len(bad)} of {len(results)} sessions do not verify")


def _bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) if root.is_dir() else 0


def _human_bytes(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    value, units = size / 1000, ["KB", "MB", "GB"]
    while value >= 1000 and len(units) > 1:
        value, units = value / 1000, units[1:]
    return f"{value:.1f} {units[0]}"


async def _verify_all(ctx: Context, public_key: Any,
                      bar: Progress = SILENT) -> dict[str, list[str]]:
    """The recordings chain, and the recordings the database knows about: sessions live on
    some node are not findings; a recording a ``session.started`` audit row names must still
    be there (or have been pruned), which catches the newest sessions deleted even when an
    older signed chain head was put back."""
    from broker.recording.manifest import _session_id, read_pruned
    from broker.services.evidence import recordings_in_database

    live, named, pruned_rows = await recordings_in_database(ctx)
    root = ctx.config.recordings_dir
    results = await asyncio.to_thread(verify_all, root, public_key, live, bar)
    pruned = set(read_pruned(root, public_key)[0]) | pruned_rows
    for directory, where in sorted(named.items()):
        session = _session_id(Path(directory))
        if not (root / directory).is_dir() and session not in pruned:
            results.setdefault(session, []).append(
                f"recording {directory} is missing ({where} names it): deleted")
    return results


@recordings.command("pubkey")
@common(json_output=False)
def recordings_pubkey(config_file: str | None) -> None:
    """Print the recording public key (PEM), to verify manifests elsewhere."""
    click.echo(Signer.from_config(config_of(config_file)).public_pem().decode("ascii"),
               nl=False)


@recordings.command("export")
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


@recordings.command("hold")
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


@recordings.command("prune")
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


@click.command("replay")
@click.argument("ident", metavar="ID", required=False)
@click.option("--last", is_flag=True, help="the most recent session (instead of an ID)")
@click.option("--speed", type=click.FloatRange(min=0.01, max=1000), default=1.0,
              show_default=True, help="2 plays twice as fast")
@click.option("--channel", type=int, default=None, help="only this channel (default: all)")
@click.option("--config", "config_file", metavar="PATH", default=None,
              help="broker.toml to use (default ./broker.toml or $BROKER_CONFIG)")
def replay_command(ident: str | None, last: bool, speed: float, channel: int | None,
                   config_file: str | None) -> None:
    """Play a session back: terminals with their timing, exec, SFTP, scp and forward
    channels as their logs. ID may be a unique prefix."""
    if (ident is None) == (not last):
        raise UsageError("replay: give a session ID (or a unique prefix of one), or --last")
    if last:
        sessions = _sessions(config_file)
        if not sessions:
            raise NotFound("no recorded session yet")
        session = max(sessions, key=lambda s: s.started_at)
    else:
        session = find_session(config_file, str(ident))
    files = channel_files(session.path, channel)
    if not files:
        raise NotFound(f"session {session.session_id} has no recorded channel"
                       + (f" {channel}" if channel is not None else ""))
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    out = sys.stdout.buffer
    for path in files:
        out.write(f"== {session.session_id} {path.name} ==\r\n".encode())
        out.flush()
        try:
            if path.suffix == ".cast":
                cast = read_cast(path)
                if interactive:
                    click.echo("space: pause/resume, left/right: -/+5 s, q: quit", err=True)
                    play_in_terminal(cast, speed, out, sys.stdin.fileno())
                else:
                    asyncio.run(replay(cast, out, speed=speed))
                out.write(b"\r\n")
            else:
                for line in (har_lines(path) if path.suffix == ".har" else log_lines(path)):
                    out.write(line.replace("\n", "\r\n").encode() + b"\r\n")
        except RecordingError as exc:
            raise UsageError(str(exc)) from None
    out.flush()


def channel_files(directory: Path, channel: int | None) -> list[Path]:
    """The session's channel recordings in channel order (``term-0.cast``, ``exec-1.jsonl``,
    ``sftp-2-2.jsonl`` ...; a web session's ``web.har``), optionally only one channel's."""
    return [f.path for f in recorded_files(directory, kinds=REPLAYED, channel=channel)]
