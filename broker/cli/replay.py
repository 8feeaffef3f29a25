"""``broker replay``: a recorded session played back in the terminal."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from broker.cli.recording_lookup import find_session, recorded_sessions
from broker.errors import NotFound, UsageError
from broker.recording import RecordingError, read_cast, replay
from broker.recording.files import REPLAYED, recorded_files
from broker.recording.logtext import har_lines, log_lines
from broker.recording.player import play_in_terminal


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
        sessions = recorded_sessions(config_file)
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
