"""Long work shows a progress bar on a terminal, and nothing of it in a pipe or with --json."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

from tests.conftest import BROKER, Cli, clean_env


def in_terminal(argv: list[str], cwd: Path) -> str:
    """Run the broker CLI with a terminal as stdin, stdout and stderr; what it showed."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([str(BROKER), *argv], stdin=terminal, stdout=terminal,
                            stderr=terminal, env=clean_env({"COLUMNS": "120"}), cwd=cwd)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    proc.wait(60)
    os.close(controller)
    assert proc.returncode == 0, shown
    return shown.decode(errors="replace")


def test_backup_and_restore_show_a_bar_on_a_terminal_only(cli: Cli, tmp_path: Path) -> None:
    config = str(cli.config)
    shown = in_terminal(["--config", config, "backup", "--out", str(tmp_path / "a.tar")],
                        tmp_path)
    assert "backing up" in shown and "100%" in shown
    assert "backup written to" in shown

    piped = cli("backup", "--out", tmp_path / "b.tar")
    assert piped.code == 0 and "backing up" not in piped.out + piped.err

    restored = in_terminal(["restore", str(tmp_path / "a.tar"), "--dir",
                            str(tmp_path / "r")], tmp_path)
    assert "restoring" in restored and "100%" in restored and "restored" in restored
    as_json = in_terminal(["restore", str(tmp_path / "b.tar"), "--dir", str(tmp_path / "j"),
                           "--json"], tmp_path)
    assert "restoring" not in as_json and '"directory"' in as_json


async def test_verify_all_counts_sessions_on_a_terminal_and_sums_up(cli: Cli,
                                                                    tmp_path: Path) -> None:
    from tests.unit.test_recordings_cli import record

    for name in ("s1", "s2", "s3"):
        await record(cli.dir, name)
    shown = in_terminal(["--config", str(cli.config), "recordings", "verify", "--all"],
                        tmp_path)
    assert "verifying" in shown and "3/3" in shown
    assert "ok: 3 sessions, " in shown and ", chain intact" in shown
    piped = cli("recordings", "verify", "--all")
    assert piped.code == 0 and "verifying" not in piped.out + piped.err


async def test_export_shows_a_bar_on_a_terminal(cli: Cli, tmp_path: Path) -> None:
    from tests.unit.test_recordings_cli import record

    await record(cli.dir, "e1")
    shown = in_terminal(["--config", str(cli.config), "recordings", "export", "e1", "--out",
                         str(tmp_path / "e1.tar")], tmp_path)
    assert "exporting" in shown and "100%" in shown and "exported session e1" in shown
