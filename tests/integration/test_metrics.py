"""GET /metrics (issue #18) against a real `broker serve`, a real sshd device and stock `ssh`."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.harness import BrokerProcess, SshdDevice, free_port, wait_for_port

TOKEN = "metrics-token-" + uuid.uuid4().hex


def _tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed
    return context


def fetch(port: int, token: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=_tls(), timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("broker_"), family.name
        assert family.documentation, f"{family.name} has no HELP text"
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(broker: BrokerProcess) -> dict:
    status, text = fetch(broker.http_port)
    assert status == 200, text
    return samples(text)


def wait_until(check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_a_session_moves_the_metrics_from_live_to_revoked(broker: BrokerProcess,
                                                          sshd_device: SshdDevice) -> None:
    suffix = uuid.uuid4().hex[:6]
    tech, device = f"tech-{suffix}", f"dev-{suffix}"
    broker.add_tech(tech)
    broker.add_sshd_device(device, sshd_device)
    grant = broker.grant(tech, device)
    before = scrape(broker)
    # a shell that prints, so bytes flow from the device while it runs
    proc = broker.popen_ssh(f"{tech}+{device}",
                            "head -c 20000 /dev/zero | tr '\\0' x; echo; sleep 60")
    try:
        live = wait_until(lambda: (lambda m: m if value(m, "broker_live_sessions",
                                                        protocol="ssh") >= 1 else None)(
            scrape(broker)))
        assert live, "the live SSH session never showed in /metrics"
        grown = wait_until(lambda: (lambda m: m if value(
            m, "broker_relayed_bytes_total", direction="from_device", transport="ssh")
            - value(before, "broker_relayed_bytes_total", direction="from_device",
                    transport="ssh") >= 20000 else None)(scrape(broker)))
        assert grown, "bytes relayed from the device did not grow by the output's size"
        broker.cli("grant", "revoke", str(grant), "--reason", "metrics test")
        proc.wait(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 1

    def revoked() -> dict | None:
        now = scrape(broker)
        moved = (value(now, "broker_sessions_total", outcome="revoked")
                 > value(before, "broker_sessions_total", outcome="revoked"))
        return now if moved else None

    after = wait_until(revoked)
    assert after, "the session counter by outcome did not move after the revoke"
    count = "broker_revocation_latency_seconds_count"
    assert value(after, count, cause="revoked") == value(before, count, cause="revoked") + 1
    assert value(after, "broker_live_sessions", protocol="ssh") == 0
    assert value(after, "broker_grants", state="revoked") >= 1


def test_a_refusal_moves_the_refusal_counter(broker: BrokerProcess) -> None:
    tech = "refused-" + uuid.uuid4().hex[:6]
    broker.add_tech(tech)
    labels = {"kind": "session.refused", "reason": "unknown_device"}
    before = value(scrape(broker), "broker_refusals_total", **labels)
    result = broker.ssh(f"{tech}+no-such-device", "true")
    assert result.code != 0
    assert wait_until(lambda: value(scrape(broker), "broker_refusals_total", **labels)
                      == before + 1), "a refused session did not move broker_refusals_total"


def test_every_family_is_prefixed_and_parses(broker: BrokerProcess) -> None:
    status, text = fetch(broker.http_port)
    assert status == 200
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"broker_live_sessions", "broker_sessions", "broker_refusals", "broker_grants",
            "broker_relayed_bytes", "broker_revocation_latency_seconds",
            "broker_recording_write_seconds", "broker_siem_lag_events",
            "broker_db_pool_checked_out", "broker_change_feed_lag_seconds"} <= names
    assert all(name.startswith("broker_") for name in names)


def test_the_servers_garbage_collections_are_timed(broker: BrokerProcess) -> None:
    # a serving process times every collection from its start, and made one full collection
    # itself once up (before it froze what it made to start: broker.server.settle_heap)
    full = wait_until(lambda: value(scrape(broker), "broker_gc_pause_seconds_count",
                                    generation="2"))
    assert full >= 1
    assert value(scrape(broker), "broker_gc_pause_seconds_sum", generation="2") > 0


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """A broker with /metrics on a listener of its own, behind a bearer token."""
    proc = BrokerProcess(tmp_path_factory.mktemp("metrics-broker")).init()
    proc.metrics_port = free_port()  # type: ignore[attr-defined]
    proc.env.update({"BROKER_METRICS_LISTEN": f"127.0.0.1:{proc.metrics_port}",  # type: ignore[attr-defined]
                     "BROKER_METRICS_TOKEN_ENV": "TEST_METRICS_TOKEN",
                     "TEST_METRICS_TOKEN": TOKEN})
    proc.serve()
    wait_for_port(proc.metrics_port, proc.proc)  # type: ignore[attr-defined]
    yield proc
    proc.stop()


def test_own_listener_and_token(guarded: BrokerProcess) -> None:
    port = guarded.metrics_port  # type: ignore[attr-defined]
    assert fetch(guarded.http_port, TOKEN)[0] == 404  # not on the portal when it has its own
    assert fetch(port)[0] == 401
    assert fetch(port, "wrong-" + TOKEN)[0] == 401
    status, text = fetch(port, TOKEN)
    assert status == 200
    assert samples(text)
    tail = json.loads(guarded.cli("audit", "tail", "-n", "20", "--json").out)
    refusals = [row for row in tail if row["kind"] == "metrics.refused"]
    reasons = {row["data"]["reason"] for row in refusals}
    assert reasons == {"no token", "wrong token"}, tail


def test_a_bad_metrics_setting_is_one_line_naming_the_key(tmp_path: Path) -> None:
    proc = BrokerProcess(tmp_path).init()
    proc.env.update({"BROKER_METRICS_LISTEN": "not-a-port"})
    result = proc.cli("grant", "list", check=False)
    assert result.code != 0
    assert "[metrics] listen" in result.err and len(result.err.strip().splitlines()) == 1
