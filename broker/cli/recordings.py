"""``broker recordings list|search|show|verify|pubkey`` (``export|hold|prune``: recordings_keep)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from broker.cli._base import common, config_of, emit, fields, run, since, table
from broker.cli.progress import progress
from broker.cli.recording_lookup import find_session, recorded_sessions, session_fields
from broker.cli.recordings_keep import recordings_export, recordings_hold, recordings_prune
from broker.errors import Refused, UsageError
from broker.recording import (
    RecordingError,
    Signer,
    verify_all,
    verify_session,
)
from broker.recording.manifest import SIGNATURE_FILE, signer_for
from broker.services.context import Context
from broker.services.progress import SILENT, Progress


@click.group("recordings")
def recordings() -> None:
    """Recorded sessions."""



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
    for s in recorded_sessions(config_file):
        meta = s.metadata
        if ((tech is not None and meta.get("technician") != tech)
                or (device_name is not None and meta.get("device") != device_name)
                or (vendor is not None and meta.get("vendor") != vendor)
                or (grant_id is not None and str(meta.get("grant")) != str(grant_id))
                or (start is not None and s.started_at < start)
                or (end is not None and s.started_at >= end)):
            continue
        data.append({**session_fields(s), "sealed": (s.path / SIGNATURE_FILE).is_file(),
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
    d = {**session_fields(session), "verified": not problems, "problems": problems,
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


for _command in (recordings_export, recordings_hold, recordings_prune):
    recordings.add_command(_command)
