"""The attacker of issue #16 item 3: a shell with write access to the database and the
recordings directory, but not the signing key. These helpers do what such an attacker can:
edit SQLite rows and recompute the hash chain with the broker's own (public) algorithm."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

from broker.audit.chain import GENESIS, canonical, link_hash
from broker.store.types import UTCDateTime

if TYPE_CHECKING:
    from tests.conftest import Cli, CliResult


def activity(cli: Cli, technicians: int = 3) -> None:
    """Real audited activity through the CLI (each command leaves a signed checkpoint)."""
    for n in range(technicians):
        key = cli.dir / f"t{n}.pub"
        key.write_text(asyncssh.generate_private_key("ssh-ed25519").export_public_key()
                       .decode())
        result = cli("tech", "add", f"tech{n}", "--vendor", "BD", "--key", str(key))
        assert result.code == 0, result.err


def register_vendor(cli: Cli, name: str = "BD") -> None:
    """The vendor exists before the history under test (as if registered by an earlier
    install), so each ``tech add`` of :func:`activity` writes exactly one audit row."""
    sql(database(cli), "INSERT OR IGNORE INTO vendor (name, domains, contract_end_noted,"
        " disabled, created_at) VALUES (?, '[]', 0, 0, '2026-01-01 00:00:00.000000')", name)


def database(cli: Cli) -> Path:
    return cli.dir / "data" / "broker.db"


def rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(r) for r in connection.execute("SELECT * FROM audit_event ORDER BY seq")]


def _ts(value: str) -> datetime:
    parsed = UTCDateTime().process_result_value(datetime.fromisoformat(value), None)
    assert parsed is not None
    return parsed


def rewrite_chain(db: Path, chain: list[dict[str, Any]]) -> None:
    """Replace the whole audit table by ``chain``, renumbered from 1 and rehashed: a
    perfectly consistent hash chain, as the attacker would leave it."""
    prev = GENESIS
    fixed = []
    for seq, row in enumerate(chain, 1):
        body = canonical(seq, _ts(row["ts"]), row["kind"], row["actor"], row["subject"],
                         json.loads(row["data"]))
        digest = link_hash(prev, body)
        fixed.append({**row, "seq": seq, "prev_hash": prev, "hash": digest})
        prev = digest
    with sqlite3.connect(db) as connection:
        connection.execute("DELETE FROM audit_event")
        connection.executemany(
            "INSERT INTO audit_event (seq, ts, kind, actor, subject, data, prev_hash, hash) "
            "VALUES (:seq, :ts, :kind, :actor, :subject, :data, :prev_hash, :hash)", fixed)


def sql(db: Path, statement: str, *params: Any) -> None:
    with sqlite3.connect(db) as connection:
        connection.execute(statement, params)


def fails_with(result: CliResult, *needles: str) -> list[str]:
    """``audit verify`` refused: exit 1, one stderr line, findings on stdout, no traceback."""
    assert result.code == 1, (result.out, result.err)
    assert len(result.err_lines) == 1 and "Traceback" not in result.err + result.out
    lines = result.out.splitlines()
    for needle in needles:
        assert any(needle in line for line in lines), (needle, result.out)
    return lines
