"""broker/metrics.py, GET /metrics's token, [metrics] settings, and the Grafana dashboard."""

from __future__ import annotations

import gc
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker import metrics
from broker.config import load_config, settings_from
from broker.errors import ConfigError
from broker.http.metrics import metrics_token
from broker.revocation.feed import seen_lag
from broker.services.context import Context
from broker.services.refusals import RefusalLog

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "broker-dashboard.json"
# PromQL words that are not series names
PROMQL = {"sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "avg", "le",
          "without", "on", "ignoring", "count"}


def test_every_series_the_dashboard_queries_is_defined() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs
    queried = {word for expr in exprs
               for word in re.findall(r"\b[a-z_][a-z0-9_]*\b", re.sub(r"\{[^}]*\}|\"[^\"]*\"",
                                                                      "", expr))
               if word.startswith("broker_")}
    assert queried, exprs
    missing = queried - metrics.names()
    assert not missing, f"the dashboard queries series broker/metrics.py does not define: {missing}"
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("live sessions", "outcome", "refusals", "revocation latency", "bytes",
                  "recording", "siem", "pool"):
        assert topic in titles


def test_exposition_parses_and_every_name_is_prefixed_with_help() -> None:
    families = list(text_string_to_metric_families(metrics.exposition().decode()))
    assert families
    for family in families:
        assert family.name.startswith("broker_") and family.documentation


@pytest.mark.parametrize(("reason", "kill", "outcome"), [
    ("connection closed", None, "closed"),
    ("your access window closed", None, "expired"),
    ("access ended: the grant was revoked (incident)", None, "revoked"),
    ("an operator ended this session", "an operator ended this session", "killed"),
    ("the broker is shutting down", None, "interrupted"),
    ("connection lost: reset", None, "error"),
    ("the broker could not confirm the grant", None, "error"),
])
def test_session_outcomes(reason: str, kill: str | None, outcome: str) -> None:
    assert metrics.session_outcome(reason, kill) == outcome


def test_revocation_latency_is_observed_from_revoke_or_end() -> None:
    hist = metrics.REVOCATION_LATENCY

    def observed(cause: str) -> float:
        return hist.labels(cause)._sum.get()  # type: ignore[attr-defined]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    before_revoked, before_expired = observed("revoked"), observed("expired")
    metrics.session_ended("revoked", closed_at=now, grant_end=now + timedelta(hours=1),
                          revoked_at=now - timedelta(seconds=0.5))
    metrics.session_ended("expired", closed_at=now, grant_end=now - timedelta(seconds=0.25))
    metrics.session_ended("closed", closed_at=now, grant_end=now - timedelta(hours=1))
    assert observed("revoked") - before_revoked == pytest.approx(0.5)
    assert observed("expired") - before_expired == pytest.approx(0.25)


def test_refusal_reasons_keep_the_label_set_small() -> None:
    assert metrics.reason_label("no grant") == "no_grant"
    assert metrics.reason_label("bad user name: '\\x1b[31m' is not a name") == "other"
    assert metrics.reason_label(None) == ""


def _config(tmp_path: Path, metrics_section: dict[str, object]):  # type: ignore[no-untyped-def]
    return settings_from({"metrics": metrics_section}, {}, tmp_path / "broker.toml")


def test_bad_metrics_settings_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[metrics\] listen"):
        _config(tmp_path, {"listen": "nowhere"})
    with pytest.raises(ConfigError, match=r"\[metrics\] token_env"):
        _config(tmp_path, {"token_env": "not a name"})
    with pytest.raises(ConfigError, match=r"\[metrics\] token_env.*not a BROKER_\* name"):
        _config(tmp_path, {"token_env": "BROKER_METRICS_TOKEN"})
    with pytest.raises(ConfigError, match=r"\[metrics\].*token_env and token_file"):
        _config(tmp_path, {"token_env": "A", "token_file": "t"})


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert metrics_token(_config(tmp_path, {})) == b""
    monkeypatch.delenv("METRICS_T", raising=False)
    with pytest.raises(ConfigError, match=r"\[metrics\] token_env = 'METRICS_T'.*not set"):
        metrics_token(_config(tmp_path, {"token_env": "METRICS_T"}))
    monkeypatch.setenv("METRICS_T", "short")
    with pytest.raises(ConfigError, match="shorter than"):
        metrics_token(_config(tmp_path, {"token_env": "METRICS_T"}))
    monkeypatch.setenv("METRICS_T", "x" * 32)
    assert metrics_token(_config(tmp_path, {"token_env": "METRICS_T"})) == b"x" * 32
    with pytest.raises(ConfigError, match=r"\[metrics\] token_file = 'missing'.*cannot read"):
        metrics_token(_config(tmp_path, {"token_file": "missing"}))
    (tmp_path / "token").write_text("y" * 40 + "\n")
    assert metrics_token(_config(tmp_path, {"token_file": "token"})) == b"y" * 40


async def test_every_refusal_is_counted_suppressed_or_not(broker_dir: Path) -> None:
    ctx = Context.open(load_config(broker_dir / "broker.toml"))
    log = RefusalLog(ctx, interval=60, burst=2)
    counter = metrics.REFUSALS.labels("test.refused", "bad-user")
    try:
        before = counter._value.get()  # type: ignore[attr-defined]
        own = [await log.refused("test.refused", "unknown", "192.0.2.9", reason="bad-user")
               for _ in range(5)]
        assert own == [True, True, False, False, False]
        assert counter._value.get() - before == 5  # type: ignore[attr-defined]
    finally:
        await ctx.close()


def test_change_feed_lag_is_from_the_row_to_when_it_was_seen() -> None:
    ts = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    seen_lag(ts, ts + timedelta(seconds=0.3))
    assert metrics.FEED_LAG._value.get() == pytest.approx(0.3)  # type: ignore[attr-defined]
    seen_lag(ts.replace(tzinfo=None), ts - timedelta(seconds=1))  # clock skew: never negative
    assert metrics.FEED_LAG._value.get() == 0  # type: ignore[attr-defined]


def gc_pauses_observed(generation: str) -> float:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if (sample.name == "broker_gc_pause_seconds_count"
                    and sample.labels["generation"] == generation):
                return sample.value
    return 0.0


def test_garbage_collector_pauses_are_timed_and_published_outside_the_collector() -> None:
    metrics.time_gc()
    metrics.time_gc()  # installed once however often it is asked
    assert gc.callbacks.count(metrics._time_gc) == 1
    metrics.publish_gc_pauses()
    before = gc_pauses_observed("2")
    gc.collect(2)
    # timed inside the collector, observed only when published (no lock in the collector)
    assert gc_pauses_observed("2") == before
    metrics.publish_gc_pauses()
    assert gc_pauses_observed("2") >= before + 1
