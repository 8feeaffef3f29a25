"""The SIEM stream's pure parts and its bookkeeping: OCSF/CEF mapping, RFC 5424 messages and
octet-counted frames, ``[siem]`` config errors, and the cluster claim on the cursor. (Delivery
to a real rsyslog: tests/integration/test_siem.py.)"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.audit.chain import canonical
from broker.config import load_config
from broker.errors import ConfigError
from broker.services.context import Context
from broker.siem.forwarder import Forwarder, lag, status
from broker.siem.mapping import KINDS, mapping_for, to_cef, to_ocsf
from broker.siem.syslog import frame, message
from broker.store.models import AuditEvent
from broker.testing import FakeClock
from tests.conftest import Cli
from tests.rsyslog_kit import parse


def row(seq: int = 7, kind: str = "login.failed", subject: str | None = "alice+pump-7",
        data: dict | None = None) -> AuditEvent:
    ts = datetime(2026, 12, 3, 22, 0, 1, 123456, tzinfo=UTC)
    payload = json.dumps(data or {"reason": "bad key", "note": 'a "quoted" ] ü\nline'},
                         sort_keys=True)
    prev = "a" * 64
    body = canonical(seq, ts, kind, "ssh:alice", subject, json.loads(payload))
    return AuditEvent(seq=seq, ts=ts, kind=kind, actor="ssh:alice", subject=subject,
                      data=payload, prev_hash=prev,
                      hash=hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest())


def test_ocsf_carries_class_per_kind_and_the_chain_links() -> None:
    event = to_ocsf(row())
    assert (event["category_uid"], event["class_uid"], event["activity_id"]) == (3, 3002, 1)
    assert event["type_uid"] == 300201 and event["status"] == "Failure"
    assert event["metadata"]["sequence"] == 7 and event["metadata"]["uid"] == row().hash
    audit = event["unmapped"]["audit"]
    # a receiver recomputes the hash from the message alone
    body = canonical(audit["seq"], datetime.fromisoformat(audit["ts"]), audit["kind"],
                     audit["actor"], audit["subject"], audit["data"])
    assert hashlib.sha256(f"{audit['prev_hash']}\n{body}".encode()).hexdigest() == audit["hash"]
    assert to_ocsf(row(kind="grant.revoked"))["class_uid"] == 3005
    assert to_ocsf(row(kind="session.started"))["class_uid"] == 4007
    assert to_ocsf(row(kind="request.created"))["class_uid"] == 6003
    assert to_ocsf(row(kind="technician.added"))["class_uid"] == 3001
    assert mapping_for("something.new").cls.uid == 0  # Base Event
    assert mapping_for("other.refused").status_id == 2
    for kind, found in KINDS.items():
        assert found.activity_id in found.cls.activities, kind


def test_rfc5424_message_and_octet_counted_frame() -> None:
    msg = message(row(), fmt="ocsf", facility=10, app_name="vendor-access-broker",
                  hostname="node-1")
    framed = frame(msg)
    length, _, rest = framed.partition(b" ")
    assert int(length) == len(rest) == len(msg)  # bytes, not characters (ü)
    parsed = parse(msg.decode())
    assert parsed.pri == 10 * 8 + 5  # authpriv, notice (a failure is Low)
    assert parsed.timestamp == "2026-12-03T22:00:01.123456Z"
    assert (parsed.hostname, parsed.app_name, parsed.msgid) == (
        "node-1", "vendor-access-broker", "login.failed")
    assert parsed.sd == {"seq": "7", "hash": row().hash, "prev_hash": "a" * 64}
    assert json.loads(parsed.msg)["metadata"]["sequence"] == 7
    assert b"\n" not in msg  # the JSON escapes the newline in the data


def test_cef_escapes_and_carries_the_chain_links() -> None:
    event = row(subject="x|y=z")
    line = to_cef(event)
    assert line.startswith("CEF:0|Vendor Access Broker|Vendor Access Broker|")
    assert "externalId=7 " in line and f"cs1={event.hash} " in line
    assert "duser=x|y\\=z" in line and "\n" not in line
    msg = message(row(), fmt="cef", facility=4, app_name="a", hostname="h").decode()
    assert parse(msg).msg.startswith("CEF:0|")


def write_config(broker_dir: Path, **siem: str) -> Path:
    config = broker_dir / "broker.toml"
    text = config.read_text()
    head, _, _ = text.partition("[siem]\n")
    lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in siem.items())
    config.write_text(f"{head}[siem]\n{lines}")
    return config


@pytest.mark.parametrize(("values", "expected"), [
    ({"syslog_url": "udp://siem:514"}, "[siem] syslog_url: expected tcp://HOST:PORT or"),
    ({"syslog_url": "tcp://:514"}, "[siem] syslog_url: expected"),
    ({"syslog_url": "tcp://siem:99999"}, "[siem] syslog_url: expected"),
    ({"format": "leef"}, "[siem] format: expected ocsf or cef, got 'leef'"),
    ({"facility": "local9"}, "[siem] facility: expected a syslog facility name"),
    ({"app_name": "has space"}, "[siem] app_name: expected 1-48 printable ASCII"),
    ({"syslog_url": "tcp://siem:514", "ca_file": "ca.pem"},
     "[siem]: ca_file is set but syslog_url is not a tls:// URL"),
    ({"syslog_url": "tls://siem:6514", "cert_file": "c.pem"},
     "[siem]: cert_file and key_file must both be set"),
    ({"retry_max": "soon"}, "[siem] retry_max:"),
])
def test_bad_siem_values_are_one_line_naming_the_key(broker_dir: Path, values: dict[str, str],
                                                     expected: str) -> None:
    config = write_config(broker_dir, **values)
    with pytest.raises(ConfigError) as caught:
        load_config(config, environ={})
    assert "\n" not in str(caught.value)
    assert expected in str(caught.value), str(caught.value)


def test_unreadable_tls_files_are_named_at_start(broker_dir: Path) -> None:
    config = write_config(broker_dir, syslog_url="tls://siem.example:6514",
                          ca_file="missing-ca.pem")
    ctx = Context.open(load_config(config, environ={}))
    with pytest.raises(ConfigError, match=r"^\[siem\] ca_file = 'missing-ca.pem': cannot use"):
        Forwarder(ctx)
    good = write_config(broker_dir, syslog_url="tls://siem.example:6514",
                        cert_file="nope.crt", key_file="nope.key")
    with pytest.raises(ConfigError, match=r"^\[siem\] cert_file = 'nope.crt'"):
        Forwarder(Context.open(load_config(good, environ={})))
    off = write_config(broker_dir)
    assert Forwarder.from_config(Context.open(load_config(off, environ={}))) is None


async def test_one_node_holds_the_stream_until_it_releases_or_its_lease_runs_out(
        broker_dir: Path) -> None:
    config = write_config(broker_dir, syslog_url="tcp://127.0.0.1:9")
    clock = FakeClock()
    contexts = []
    for node in ("node-1", "node-2"):
        ctx = Context.open(load_config(config, environ={}), clock=clock)
        ctx.node = node
        contexts.append(ctx)
    one, two = (Forwarder(ctx, lease=timedelta(seconds=30)) for ctx in contexts)
    try:
        async with contexts[0].store.session() as db:
            for _ in range(3):
                await contexts[0].audit(db, "technician.added", "cli:test", "t")
        assert await one.claim() == 0
        assert await two.claim() is None  # node-1 holds it
        assert (await status(contexts[1])).forwarding_node == "node-1"
        assert await lag(contexts[1]) == 3
        clock.advance(timedelta(seconds=31))  # node-1 died: its lease ran out
        assert await two.claim() == 0
        assert await one.claim() is None
        assert not await one._advance(0, 3)  # node-1 lost the claim: cannot move the cursor
        assert await two._advance(0, 3)
        await two.release()
        assert await one.claim() == 3 and await lag(contexts[0]) == 0
    finally:
        for ctx in contexts:
            await ctx.close()


def test_siem_status_cli(cli: Cli) -> None:
    off = cli("siem", "status")
    assert off.code == 0 and "off ([siem] syslog_url is empty)" in off.out
    cli("approver", "add", "ann", "--email", "ann@hospital.example")
    data = json.loads(cli("siem", "status", "--json",
                          env={"BROKER_SIEM_SYSLOG_URL": "tcp://siem.example"}).out)
    assert data["enabled"] and data["target"] == "tcp://siem.example:514"
    assert (data["cursor"], data["head"], data["lag"]) == (0, 1, 1)
    bad = cli("siem", "status", env={"BROKER_SIEM_SYSLOG_URL": "udp://siem.example:514"})
    assert bad.code == 1 and len(bad.err_lines) == 1
    assert "BROKER_SIEM_SYSLOG_URL (environment): [siem] syslog_url: expected" in bad.err
