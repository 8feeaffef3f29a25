"""The SIEM stream against a real rsyslog (imtcp; gtls for TLS) started by the tests: events
arrive in chain order with seq/hash/prev_hash, an outage of the receiver is caught up with no
loss and no duplicate, a restarted ``broker serve`` resumes from its cursor, and TLS with a
client certificate works."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlmodel import col, select

from broker.config import load_config
from broker.services.context import Context
from broker.siem.forwarder import Forwarder, status
from broker.store.models import AuditEvent
from tests.integration.harness import BrokerProcess
from tests.pg_kit import PostgresCluster
from tests.rsyslog_kit import Rsyslog, gtls_available, need_rsyslog


@pytest.fixture
def rsyslog(tmp_path: Path) -> Iterator[Rsyslog]:
    need_rsyslog()
    server = Rsyslog(tmp_path / "rsyslog").start()
    yield server
    server.stop()


def siem_env(url: str, **more: str) -> dict[str, str]:
    env = {"BROKER_SIEM_SYSLOG_URL": url, "BROKER_SIEM_RETRY_BASE": "1s",
           "BROKER_SIEM_RETRY_MAX": "1s", "BROKER_SIEM_TIMEOUT": "3s"}
    env.update({f"BROKER_SIEM_{k.upper()}": v for k, v in more.items()})
    return env


@contextlib.asynccontextmanager
async def forwarding(broker_dir: Path, env: dict[str, str]) -> AsyncIterator[Context]:
    """A context on ``broker_dir`` and its forwarder running (polling every 0.1 s)."""
    ctx = Context.open(load_config(broker_dir / "broker.toml", environ=env))
    task = asyncio.ensure_future(Forwarder(ctx, poll=0.1).run())
    try:
        yield ctx
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await ctx.close()


async def write_events(ctx: Context, count: int, kind: str = "login.failed") -> None:
    for n in range(count):
        async with ctx.store.session() as db:
            await ctx.audit(db, kind, "ssh:alice", f"alice+pump-{n}", reason="bad key",
                            text='quotes " and ] and ü')


async def chain(ctx: Context) -> list[AuditEvent]:
    async with ctx.store.session() as db:
        return list((await db.exec(select(AuditEvent).order_by(col(AuditEvent.seq)))).all())


async def wait_seqs(server: Rsyslog, count: int, timeout: float = 20) -> list[int]:
    return await asyncio.to_thread(server.wait_for_seqs, count, timeout)


async def test_events_arrive_in_chain_order_with_seq_and_hashes(
        broker_dir: Path, rsyslog: Rsyslog) -> None:
    env = siem_env(f"tcp://127.0.0.1:{rsyslog.port}")
    async with forwarding(broker_dir, env) as ctx:
        await write_events(ctx, 5)
        async with ctx.store.session() as db:
            await ctx.audit(db, "technician.added", "cli:admin", "alice", vendor="Acme")
        seqs = await wait_seqs(rsyslog, 6)
        rows = await chain(ctx)
        assert seqs == [row.seq for row in rows]
        for frame, row in zip(rsyslog.frames(), rows, strict=True):
            assert frame.sd == {"seq": str(row.seq), "hash": row.hash,
                                "prev_hash": row.prev_hash}
            assert frame.msgid == row.kind and frame.app_name == "vendor-access-broker"
            event = json.loads(frame.msg)
            assert event["metadata"]["sequence"] == row.seq
            assert event["unmapped"]["audit"]["data"] == json.loads(row.data)
        assert [json.loads(f.msg)["class_uid"] for f in rsyslog.frames()] == [3002] * 5 + [3001]
        assert rsyslog.frames()[0].pri == 10 * 8 + 5  # authpriv.notice
        state = await status(ctx)
        assert (state.cursor, state.head, state.lag, state.last_error) == (6, 6, 0, None)


async def test_a_receiver_outage_is_caught_up_without_loss_or_duplicates(
        broker_dir: Path, rsyslog: Rsyslog) -> None:
    env = siem_env(f"tcp://127.0.0.1:{rsyslog.port}")
    async with forwarding(broker_dir, env) as ctx:
        await write_events(ctx, 3)
        assert await wait_seqs(rsyslog, 3) == [1, 2, 3]
        await asyncio.to_thread(rsyslog.stop)
        for _ in range(4):  # events keep coming while the SIEM is down
            await write_events(ctx, 2)
            await asyncio.sleep(0.3)
        deadline = time.monotonic() + 10
        while (await status(ctx)).last_error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        down = await status(ctx)
        assert down.last_error and "cannot connect" in down.last_error, down
        assert down.lag == 8 and down.cursor == 3
        await asyncio.to_thread(rsyslog.start)
        seqs = await wait_seqs(rsyslog, 11)
        assert seqs == [row.seq for row in await chain(ctx)] == list(range(1, 12))
        up = await status(ctx)
        assert (up.cursor, up.lag, up.last_error) == (11, 0, None)


def _chain(broker: BrokerProcess) -> list[int]:
    return [json.loads(line)["seq"] for line in broker.cli("audit", "export").out.splitlines()]


def _caught_up(broker: BrokerProcess, rsyslog: Rsyslog, timeout: float = 30) -> list[int]:
    """Wait until the SIEM holds exactly the chain (serve writes events of its own too)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        chain = _chain(broker)
        if rsyslog.seqs() == chain:
            time.sleep(0.3)  # anything more (a duplicate) would show up now
            break
        time.sleep(0.2)
    return rsyslog.seqs()


def test_a_restarted_broker_resumes_from_its_cursor(tmp_path: Path, rsyslog: Rsyslog) -> None:
    broker = BrokerProcess(tmp_path / "broker").init()
    broker.env.update(siem_env(f"tcp://127.0.0.1:{rsyslog.port}"))
    try:
        broker.serve()
        for name in ("ann", "bob"):
            broker.cli("approver", "add", name, "--email", f"{name}@hospital.example")
        assert _caught_up(broker, rsyslog) == _chain(broker)
        for name in ("cat", "dan", "eve"):  # a busy stream: stop the broker in the middle
            broker.cli("approver", "add", name, "--email", f"{name}@hospital.example")
        broker.stop()
        stopped_at = len(rsyslog.seqs())
        for name in ("fay", "gus"):  # written while no broker runs
            broker.cli("approver", "add", name, "--email", f"{name}@hospital.example")
        lagging = broker.cli_json("siem", "status")
        head = _chain(broker)[-1]
        assert isinstance(lagging, dict) and lagging["lag"] == head - stopped_at
        broker.serve()
        seqs = _caught_up(broker, rsyslog)
        exported = _chain(broker)
        assert seqs == exported == list(range(1, exported[-1] + 1))  # none lost, none twice
        final = broker.cli_json("siem", "status")
        assert isinstance(final, dict)
        assert final["cursor"] == final["head"] == exported[-1] and final["lag"] == 0
        assert final["forwarding_node"] and final["target"] == f"tcp://127.0.0.1:{rsyslog.port}"
        human = broker.cli("siem", "status").out
        assert "lag:        0" in human
    finally:
        broker.stop()


# -- TLS ----------------------------------------------------------------------------------------
def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          ip: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(directory: Path) -> dict[str, Path]:
    """A self-signed CA, a server certificate for 127.0.0.1 and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test SIEM CA", ca_key, "Test SIEM CA", ca_key, ca=True)
    for label, cert, key in [("ca", ca, ca_key)] + [
            (label, _cert(cn, key, "Test SIEM CA", ca_key, ip=ip), key)
            for label, cn, ip, key in (
                ("server", "siem.test", "127.0.0.1", ec.generate_private_key(ec.SECP256R1())),
                ("client", "broker.test", None, ec.generate_private_key(ec.SECP256R1())))]:
        files[label] = directory / f"{label}.crt"
        files[label].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{label}_key"] = directory / f"{label}.key"
        files[f"{label}_key"].write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption()))
    return files


async def test_tls_with_a_client_certificate(broker_dir: Path, tmp_path: Path) -> None:
    need_rsyslog()
    if not gtls_available():
        pytest.skip("rsyslog's TLS driver is missing (apt-get install rsyslog-gnutls)")
    pki = make_pki(tmp_path / "pki")
    server = Rsyslog(tmp_path / "rsyslog-tls", client_auth=True,
                     tls={"ca": pki["ca"], "cert": pki["server"], "key": pki["server_key"]})
    await asyncio.to_thread(server.start)
    try:
        env = siem_env(f"tls://127.0.0.1:{server.port}", ca_file=str(pki["ca"]),
                       cert_file=str(pki["client"]), key_file=str(pki["client_key"]),
                       format="cef")
        async with forwarding(broker_dir, env) as ctx:
            await write_events(ctx, 4)
            assert await wait_seqs(server, 4) == [1, 2, 3, 4]
            assert all(frame.msg.startswith("CEF:0|") for frame in server.frames())
        # a broker that does not trust the SIEM's CA sends nothing, and says why
        other = make_pki(tmp_path / "other")
        env = siem_env(f"tls://127.0.0.1:{server.port}", ca_file=str(other["ca"]))
        async with forwarding(broker_dir, env) as ctx:
            await write_events(ctx, 1)
            deadline = time.monotonic() + 10
            while (await status(ctx)).last_error is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            state = await status(ctx)
            assert state.last_error and "TLS handshake failed" in state.last_error, state
            assert state.lag == 1
        assert server.seqs() == [1, 2, 3, 4]
    finally:
        await asyncio.to_thread(server.stop)


# -- a cluster on PostgreSQL -------------------------------------------------------------------
async def test_two_nodes_on_postgres_forward_each_event_once(
        broker_dir: Path, rsyslog: Rsyslog, postgres: PostgresCluster) -> None:
    from broker.services.setup import migrate_database

    url = postgres.create_database()
    await migrate_database(url)
    env = {**siem_env(f"tcp://127.0.0.1:{rsyslog.port}"), "BROKER_BROKER_DATABASE_URL": url}
    nodes = []
    for name in ("node-1", "node-2"):
        ctx = Context.open(load_config(broker_dir / "broker.toml", environ=env))
        ctx.node = name
        nodes.append((ctx, asyncio.ensure_future(Forwarder(ctx, poll=0.05).run())))
    try:
        writer = nodes[0][0]
        for _ in range(5):
            await write_events(writer, 3)
            await asyncio.sleep(0.1)
        assert await wait_seqs(rsyslog, 15) == list(range(1, 16))
        holder = (await status(writer)).forwarding_node
        assert holder in ("node-1", "node-2")
        # the forwarding node stops (releases its claim): the other one carries on
        index = 0 if holder == "node-1" else 1
        nodes[index][1].cancel()
        await asyncio.gather(nodes[index][1], return_exceptions=True)
        await write_events(writer, 4)
        assert await wait_seqs(rsyslog, 19) == list(range(1, 20))
        assert (await status(writer)).forwarding_node == ("node-2" if index == 0 else "node-1")
        hosts = {frame.hostname for frame in rsyslog.frames()[15:]}
        assert hosts == {"node-2" if index == 0 else "node-1"}
    finally:
        for ctx, task in nodes:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await ctx.close()
