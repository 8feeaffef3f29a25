"""Issue #16 item 3, the audit log: an attacker who can write the database (not the signing
key) rewrites, truncates or renumbers the hash chain; ``broker audit verify`` must fail.

Every test runs the real ``broker`` CLI on a real ``broker init`` SQLite database; the
attacks use the broker's own hash algorithm, so the chain itself stays consistent and only
the signed checkpoints can tell."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.chain import canonical, link_hash
from tests.conftest import Cli
from tests.security import evidence_kit
from tests.security.evidence_kit import (
    database,
    fails_with,
    rewrite_chain,
    rows,
    sql,
)


def activity(cli: Cli, technicians: int = 3) -> None:
    """One audit row (and one signed checkpoint) per command: the rows' numbers below count
    on it."""
    evidence_kit.register_vendor(cli)
    evidence_kit.activity(cli, technicians)


def _settle() -> None:
    time.sleep(5.2)  # past verify's grace: rows this old must be covered by a checkpoint


def test_clean_install_with_activity_passes(cli: Cli) -> None:
    activity(cli)
    result = cli("audit", "verify")
    assert result.code == 0, result.out + result.err
    assert "chain intact" in result.out and "3 checkpoints" in result.out
    report = json.loads(cli("audit", "verify", "--json").out)
    assert report["ok"] and report["rows"] == 3 and report["notes"] == []


def test_a_row_edited_and_every_later_hash_recomputed_fails(cli: Cli) -> None:
    activity(cli)
    db = database(cli)
    chain = rows(db)
    chain[0]["data"] = json.dumps({**json.loads(chain[0]["data"]), "vendor": "Innocent Ltd"},
                                  sort_keys=True)
    rewrite_chain(db, chain)
    fails_with(cli("audit", "verify"), "signed row 1 with hash",
               "rows up to 1 were changed, inserted or deleted")


def test_the_newest_rows_deleted_fails(cli: Cli) -> None:
    activity(cli)
    sql(database(cli), "DELETE FROM audit_event WHERE seq > 1")
    fails_with(cli("audit", "verify"), "but the newest row is 1: rows 2-3 were deleted")


def test_a_middle_row_deleted_and_the_rest_renumbered_fails(cli: Cli) -> None:
    activity(cli)
    db = database(cli)
    chain = rows(db)
    del chain[1]
    rewrite_chain(db, chain)
    lines = fails_with(cli("audit", "verify"), "signed row 2 with hash")
    assert any("row 3 was deleted" in line for line in lines), lines


def test_a_forged_checkpoint_fails(cli: Cli) -> None:
    """Rewrite the chain, then sign its new head with a key of the attacker's own."""
    activity(cli)
    db = database(cli)
    chain = rows(db)
    chain[2]["actor"] = "cli:nobody"
    rewrite_chain(db, chain)
    head = rows(db)[-1]
    at = datetime.now(UTC)
    body = json.dumps({"v": 1, "node": "n1", "kind": "cli", "seq": head["seq"],
                       "hash": head["hash"], "at": at.isoformat(), "prev": None},
                      sort_keys=True, separators=(",", ":")).encode()
    forged = base64.b64encode(Ed25519PrivateKey.generate().sign(body)).decode()
    sql(db, "DELETE FROM audit_checkpoint")
    for signature in (forged, ""):
        sql(db, "INSERT INTO audit_checkpoint (node, kind, seq, hash, at, prev, digest, "
                "signature) VALUES ('n1', 'cli', ?, ?, ?, NULL, ?, ?)", head["seq"],
            head["hash"], at.strftime("%Y-%m-%d %H:%M:%S.%f"),
            hashlib.sha256(body + signature.encode()).hexdigest(), signature)
    _settle()
    lines = fails_with(cli("audit", "verify"), "the signature does not verify",
                       "are not covered by any signed checkpoint")
    assert sum("the signature does not verify" in line for line in lines) == 2


def test_rows_appended_without_the_key_are_an_unsigned_gap(cli: Cli) -> None:
    activity(cli, technicians=1)
    db = database(cli)
    head = rows(db)[-1]
    ts = datetime.now(UTC) - timedelta(seconds=30)
    body = canonical(2, ts, "grant.revoked", "cli:admin", "grant:1", {})
    sql(db, "INSERT INTO audit_event (seq, ts, kind, actor, subject, data, prev_hash, hash) "
            "VALUES (2, ?, 'grant.revoked', 'cli:admin', 'grant:1', '{}', ?, ?)",
        ts.strftime("%Y-%m-%d %H:%M:%S.%f"), head["hash"], link_hash(head["hash"], body))
    fails_with(cli("audit", "verify"), "audit rows 2-2", "not covered by any signed checkpoint")


def test_every_checkpoint_deleted_leaves_the_rows_uncovered(cli: Cli) -> None:
    activity(cli, technicians=2)
    sql(database(cli), "DELETE FROM audit_checkpoint")
    _settle()
    fails_with(cli("audit", "verify"), "audit rows 1-2", "not covered by any signed checkpoint")


def test_newest_rows_and_checkpoints_deleted_are_caught_by_the_log_copy(
        cli: Cli, tmp_path: Path) -> None:
    """The database alone is consistent again; the checkpoint lines the SIEM kept are not."""
    activity(cli)
    siem = tmp_path / "siem-copy.jsonl"
    shutil.copyfile(cli.dir / "data" / "broker.log", siem)
    db = database(cli)
    sql(db, "DELETE FROM audit_event WHERE seq > 1")
    sql(db, "DELETE FROM audit_checkpoint WHERE seq > 1")
    fails_with(cli("audit", "verify", "--checkpoints", str(siem)),
               "rows 2-3 were deleted", "is missing from the database: checkpoints were deleted")
    missing = cli("audit", "verify", "--checkpoints", str(tmp_path / "nope.jsonl"))
    assert missing.code == 2 and len(missing.err_lines) == 1


def test_the_log_copy_of_an_intact_broker_verifies(cli: Cli) -> None:
    activity(cli)
    result = cli("audit", "verify", "--checkpoints", str(cli.dir / "data" / "broker.log"))
    assert result.code == 0, result.out + result.err
