"""``broker recordings list|show|verify|pubkey`` and ``broker replay``."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click

from broker.cli._base import common, config_of, emit, fields, table
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
    matches = [s for s in _sessions(config_file) if s.session_id == ident
               or s.path.name == ident]
    if not matches:
        raise NotFound(f"no recorded session {ident!r} (see 'broker recordings list')")
    return matches[0]


@recordings.command("list")
@click.option("--tech", default=None)
@click.option("--device", "device_name", default=None)
@common()
def recordings_list(tech: str | None, device_name: str | None, config_file: str | None,
                    as_json: bool) -> None:
    """List recorded sessions, oldest first."""
    data = [_info(s) for s in _sessions(config_file)
            if (tech is None or s.metadata.get("technician") == tech)
            and (device_name is None or s.metadata.get("device") == device_name)]
    emit(as_json, data, lambda: table(
        [(d["id"], d["started_at"], d["technician"], d["device"], d["grant"],
          d["end_reason"] or "live") for d in data],
        ["id", "started", "technician", "device", "grant", "ended"]))


@recordings.command("show")
@click.argument("ident", metavar="ID")
@common()
def recordings_show(ident: str, config_file: str | None, as_json: bool) -> None:
    """Show a recorded session's metadata and files."""
    d = _info(find_session(config_file, ident))
    emit(as_json, d, lambda: fields(
        [("session", d["id"]), ("technician", f"{d['technician']} ({d['vendor']})"),
         ("device", d["device"]), ("grant", d["grant"]), ("client", d["client"]),
         ("started", d["started_at"]), ("ended", d["ended_at"]),
         ("end reason", d["end_reason"]), ("directory", d["directory"])]
        + [("file", name) for name in d["files"]]))


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
    results = verify_all(config.recordings_dir, public_key)
    bad = {s: p for s, p in results.items() if p}
    emit(as_json, {"ok": not bad, "sessions": [{"session": s, "ok": not p, "problems": p}
                                                for s, p in results.items()]},
         "\n".join(f"{s}: {line}" for s, p in bad.items() for line in p) or "ok")
    if bad:
        raise Refused(f"{len(bad)} of {len(results)} sessions do not verify")


@recordings.command("pubkey")
@common(json_output=False)
def recordings_pubkey(config_file: str | None) -> None:
    """Print the recording public key (PEM), to verify manifests elsewhere."""
    click.echo(Signer.from_config(config_of(config_file)).public_pem().decode("ascii"),
               nl=False)


@click.command("replay")
@click.argument("ident", metavar="ID")
@click.option("--speed", type=click.FloatRange(min=0.01, max=1000), default=1.0,
              show_default=True)
@click.option("--channel", type=int, default=None, help="terminal channel (default: first)")
@click.option("--config", "config_file", metavar="PATH", default=None)
def replay_command(ident: str, speed: float, channel: int | None,
                   config_file: str | None) -> None:
    """Play a session's terminal in this terminal, with its timing."""
    session = find_session(config_file, ident)
    casts = sorted(session.path.glob("term-*.cast"))
    if channel is not None:
        casts = [c for c in casts if c.name.startswith(f"term-{channel}.")
                 or c.name.startswith(f"term-{channel}-")]
    if not casts:
        raise NotFound(f"session {session.session_id} has no terminal recording"
                       " (exec channels are in exec-*.jsonl)")
    try:
        cast = read_cast(casts[0])
    except RecordingError as exc:
        raise UsageError(str(exc)) from None
    asyncio.run(replay(cast, sys.stdout.buffer, speed=speed))
    sys.stdout.buffer.write(b"\r\n")

