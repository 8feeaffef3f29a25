"""``broker replay``: --last, unique ID prefixes, and every channel kind played back (exec,
SFTP, scp as their logs), with recorded escape sequences in logs shown escaped."""

from __future__ import annotations

from datetime import timedelta

from broker.config import load_config
from broker.recording import Flusher, SessionRecording
from tests.conftest import Cli
from tests.unit.test_recordings_cli import NOW, Clock, record


async def _exec_only(broker_dir, session_id: str, output: bytes) -> None:
    config = load_config(broker_dir / "broker.toml")
    flusher = Flusher(interval=3600)
    rec = SessionRecording.create(config.recordings_dir, session_id, NOW, {"technician": "t"},
                                  flusher=flusher, clock=Clock(), now=lambda: NOW)
    exe = rec.exec_log(0, "cat /etc/motd")
    exe.stdout(output)
    exe.exit(3)
    await rec.close("connection closed")
    await flusher.stop()


async def test_replay_plays_every_channel_in_order(cli: Cli, broker_dir) -> None:
    await record(broker_dir, "a1b2c3d4e5f6")
    played = cli("replay", "a1b2", "--speed", "1000")
    assert played.code == 0, played.err
    out = played.out.replace("\r\n", "\n")
    heads = [line for line in out.splitlines() if line.startswith("== ")]
    assert heads == ["== a1b2c3d4e5f6 term-0.cast ==", "== a1b2c3d4e5f6 exec-1.jsonl ==",
                     "== a1b2c3d4e5f6 sftp-2.jsonl =="]
    assert "Pump firmware V2.7.1" in out
    assert "$ show alarms" in out and "[stdout] alarm: occlusion detected" in out
    assert "exit status=0" in out
    assert "upload path=/upload/Pump-Config.xml bytes_written=12 result=ok" in out

    only = cli("replay", "a1b2c3d4e5f6", "--channel", "1")
    assert only.code == 0 and "term-0.cast" not in only.out and "exec-1.jsonl" in only.out


async def test_last_prefixes_and_their_errors(cli: Cli, broker_dir) -> None:
    await record(broker_dir, "ab0001", start=NOW - timedelta(hours=3))
    await record(broker_dir, "ab0002", start=NOW - timedelta(hours=2))
    await _exec_only(broker_dir, "ff0003", b"evil \x1b]52;c;cm0gLXJmIC8=\x07 title\n")
    last = cli("replay", "--last")
    assert last.code == 0, last.err
    assert "== ff0003 exec-0.jsonl ==" in last.out
    assert "\x1b" not in last.out and "\\x1b]52;c;cm0gLXJmIC8=\\x07" in last.out
    assert "exit status=3" in last.out

    ambiguous = cli("replay", "ab")
    assert ambiguous.code == 1 and len(ambiguous.err_lines) == 1
    assert "'ab' is ambiguous" in ambiguous.err and "ab0001, ab0002" in ambiguous.err
    missing = cli("replay", "zz")
    assert missing.code == 1 and "no recorded session 'zz'" in missing.err
    for argv in (["replay"], ["replay", "ab0001", "--last"]):
        usage = cli(*argv)
        assert usage.code == 2 and "give a session ID" in usage.err, usage
    shown = cli("recordings", "show", "ab0002", "--json")  # prefixes work there too
    assert shown.code == 0 and '"id": "ab0002"' in shown.out
    exact = cli("recordings", "show", "ab000")
    assert exact.code == 1 and "ambiguous" in exact.err
