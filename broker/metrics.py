"""Every Prometheus metric of the broker, defined here and nowhere else (issue #18).

The metrics live in a registry of the broker's own (:data:`REGISTRY`), never the process-wide
default, so that a test or a second application in one process never collides with them.
Counters and histograms are moved where things happen (cheap: one call per event or per
relayed chunk, never per byte); the gauges that come from the database (grants by state,
SIEM lag, pool use) and from this node's live-session registry are computed at each scrape
by :func:`refresh`. ``GET /metrics`` is served by :mod:`broker.http.metrics`.

With ``[broker] workers`` > 1 a scrape reaches one worker, yet answers for the node: the
supervisor gives every worker one directory (:data:`MULTIPROCESS_ENV`), each worker's values
live in files there (prometheus-client's multiprocess mode), and :func:`exposition` adds them
up: counters and histograms summed over every worker that ever ran in this start, per-worker
gauges (live sessions, pool use) over the living ones, database-derived gauges (grants, SIEM
lag) as last set. Each worker publishes its own gauges each second (:func:`publish_local`).
"""

from __future__ import annotations

import gc
import os
import re
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

if TYPE_CHECKING:
    from broker.services.context import Context

log = structlog.get_logger("broker.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST
# set (by the supervisor, for its workers) before this module is imported: values in files
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

PROTOCOLS = ("ssh", "sftp", "scp", "forward", "web")
OUTCOMES = ("closed", "killed", "revoked", "expired", "interrupted", "error")
GRANT_STATES = ("scheduled", "active", "expired", "revoked")

LIVE_SESSIONS = Gauge(
    "broker_live_sessions", "Sessions live on this node now, by protocol of their first"
    " channel (ssh, sftp, scp, forward, web).", ["protocol"], registry=REGISTRY,
    multiprocess_mode="livesum")
SESSIONS = Counter(
    "broker_sessions", "Sessions ended on this node, by outcome: closed (by the technician),"
    " killed (by an operator), revoked (grant revoked, device retired, technician disabled),"
    " expired (window closed), interrupted (broker stopped), error.", ["outcome"],
    registry=REGISTRY)
REFUSALS = Counter(
    "broker_refusals", "Refusals audited through a RefusalLog, suppressed from the audit log"
    " or not, by kind (the audit event kind) and reason (a short reason code, else 'other').",
    ["kind", "reason"], registry=REGISTRY)
GRANTS = Gauge(
    "broker_grants", "Grants in the database by state (computed at each scrape).", ["state"],
    registry=REGISTRY, multiprocess_mode="mostrecent")
AUTH_FAILURES = Counter(
    "broker_auth_failures", "Failed authentication attempts, by service (ssh: a key,"
    " certificate or TOTP code refused; staff: a portal sign-in refused).", ["service"],
    registry=REGISTRY)
REVOCATION_LATENCY = Histogram(
    "broker_revocation_latency_seconds", "From a grant's end (or its revocation) to the close"
    " of a session cut for it.", ["cause"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY)
BYTES_RELAYED = Counter(
    "broker_relayed_bytes", "Bytes relayed between technicians and devices, by direction"
    " (to_device, from_device) and transport (ssh, forward, web).", ["direction", "transport"],
    registry=REGISTRY)
RECORDING_WRITE = Histogram(
    "broker_recording_write_seconds", "One flusher round: flushing every open recording"
    " file and fsyncing those that changed.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY)
RECORDING_FAILURES = Counter(
    "broker_recording_write_failures", "Recording writes that failed (create, write, flush or"
    " fsync), by step.", ["step"], registry=REGISTRY)
NOTIFICATION_FAILURES = Counter(
    "broker_notification_failures", "Failed notification delivery attempts, by channel and"
    " whether it was the last attempt (final=true: the notification is given up).",
    ["channel", "final"], registry=REGISTRY)
FEED_LAG = Gauge(
    "broker_change_feed_lag_seconds", "For the newest change this node's change feed saw:"
    " seconds from its audit row's timestamp to this node reading it.", registry=REGISTRY,
    multiprocess_mode="livemax")
SIEM_LAG = Gauge(
    "broker_siem_lag_events", "Audit events not yet forwarded to the SIEM (0 when [siem] is"
    " off; computed at each scrape).", registry=REGISTRY, multiprocess_mode="mostrecent")
POOL_CHECKED_OUT = Gauge(
    "broker_db_pool_checked_out", "Database connections checked out of the SQLAlchemy pool"
    " now, in all of this node's workers.", registry=REGISTRY, multiprocess_mode="livesum")
POOL_SIZE = Gauge(
    "broker_db_pool_size", "The SQLAlchemy pools' configured size, all of this node's workers'"
    " added up.", registry=REGISTRY, multiprocess_mode="livesum")
DEVICE_LOGINS = Counter(
    "broker_device_logins", "Device connections an SSH session started on: new (the broker"
    " logged in to the device) or reused (kept from the same technician's last session on the"
    " device, [ssh] device_keepalive).", ["how"], registry=REGISTRY)
DEVICE_CONNECTIONS_IDLE = Gauge(
    "broker_device_connections_idle", "Device connections open and kept for a technician's"
    " next session now ([ssh] device_keepalive), in all of this node's workers.",
    registry=REGISTRY, multiprocess_mode="livesum")
GC_PAUSES = Histogram(
    "broker_gc_pause_seconds", "How long Python's garbage collector stopped a broker process,"
    " by generation (2: a full collection, which walks every live object; a burst of logins"
    " sets them off).", ["generation"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
SCRAPE_ERRORS = Counter(
    "broker_scrape_errors", "Scrapes whose database-derived values could not be refreshed"
    " (the previous values are shown).", registry=REGISTRY)

# Children bound once, so that the relay's per-chunk call is one lock and one add.
SSH_TO_DEVICE = BYTES_RELAYED.labels("to_device", "ssh")
SSH_FROM_DEVICE = BYTES_RELAYED.labels("from_device", "ssh")
FORWARD_TO_DEVICE = BYTES_RELAYED.labels("to_device", "forward")
FORWARD_FROM_DEVICE = BYTES_RELAYED.labels("from_device", "forward")
WEB_TO_DEVICE = BYTES_RELAYED.labels("to_device", "web")
WEB_FROM_DEVICE = BYTES_RELAYED.labels("from_device", "web")

for _outcome in OUTCOMES:
    SESSIONS.labels(_outcome)
for _protocol in PROTOCOLS:
    LIVE_SESSIONS.labels(_protocol)
for _service in ("ssh", "staff"):
    AUTH_FAILURES.labels(_service)
for _cause in ("expired", "revoked"):
    REVOCATION_LATENCY.labels(_cause)
for _step in ("create", "write", "flush", "fsync"):
    RECORDING_FAILURES.labels(_step)

_REASON = re.compile(r"[a-z][a-z0-9 _.-]{0,31}\Z")


def reason_label(reason: object) -> str:
    """A refusal's reason as a label: a short code (``expired``, ``no grant``) as it is,
    free text (which could grow the series without bound) as ``other``."""
    if reason is None:
        return ""
    text = str(reason)
    return text.replace(" ", "_") if _REASON.match(text) else "other"


def refused(kind: str, reason: object) -> None:
    REFUSALS.labels(kind[:60], reason_label(reason)).inc()


# -- sessions ----------------------------------------------------------------------------------
SHUTTING_DOWN = "the broker is shutting down"
WINDOW_CLOSED = "your access window closed"
REVOKED_PREFIX = "access ended:"


def session_outcome(reason: str, kill_reason: str | None) -> str:
    """How a session ended, from the reason it was closed with (the texts the SSH and web
    sessions close with) and the operator's kill reason, if one was set."""
    if kill_reason is not None and reason == kill_reason:
        return "killed"
    if reason == WINDOW_CLOSED:
        return "expired"
    if reason.startswith(REVOKED_PREFIX):
        return "revoked"
    if reason == SHUTTING_DOWN:
        return "interrupted"
    if reason.startswith("connection lost") or "could not confirm" in reason:
        return "error"
    return "closed"


def session_ended(outcome: str, *, closed_at: datetime | None = None,
                  grant_end: datetime | None = None,
                  revoked_at: datetime | None = None) -> None:
    """Count an ended session; for one cut because its grant ended or was revoked, observe
    how long after the end (or the revocation) it closed."""
    SESSIONS.labels(outcome).inc()
    if closed_at is None:
        return
    since = revoked_at if outcome == "revoked" and revoked_at is not None else (
        grant_end if outcome == "expired" else None)
    if since is not None:
        REVOCATION_LATENCY.labels(outcome).observe(
            max(0.0, (closed_at - since).total_seconds()))


# -- scrape-time values ------------------------------------------------------------------------
def count_live(sessions: Iterable[object]) -> None:
    tally = Tally(str(getattr(s, "protocol", "ssh") or "ssh") for s in sessions)
    for protocol in {*PROTOCOLS, *tally}:
        LIVE_SESSIONS.labels(protocol).set(tally.get(protocol, 0))


def pool_use(engine: Any) -> None:
    pool = getattr(engine, "pool", None)
    checkedout = getattr(pool, "checkedout", None)
    if callable(checkedout):
        POOL_CHECKED_OUT.set(checkedout())
    size = getattr(pool, "size", None)
    if callable(size):
        POOL_SIZE.set(size())


def publish_local(ctx: Context, sessions: Iterable[object]) -> None:
    """This process's own gauges: its live sessions and its pool; and its GC pauses."""
    count_live(sessions)
    pool_use(ctx.store.engine)
    publish_gc_pauses()


# -- garbage collector pauses ----------------------------------------------------------------
# The collector runs at any allocation, also inside a metric's own locked section, so its
# callback takes no lock: it appends to a deque, and publish_gc_pauses() observes from there.
_gc_pauses: deque[tuple[int, float]] = deque(maxlen=10_000)
_gc_started = 0.0


def _time_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        _gc_pauses.append((info["generation"], time.perf_counter() - _gc_started))


def time_gc() -> None:
    """Time every collection in this process (``broker_gc_pause_seconds``)."""
    if _time_gc not in gc.callbacks:
        gc.callbacks.append(_time_gc)


def publish_gc_pauses() -> None:
    while _gc_pauses:
        generation, seconds = _gc_pauses.popleft()
        GC_PAUSES.labels(str(generation)).observe(seconds)


async def refresh(ctx: Context, sessions: Iterable[object]) -> None:
    """Set the gauges computed at scrape time."""
    from sqlmodel import col, func, select

    from broker.siem.forwarder import lag
    from broker.store.models import Grant

    publish_local(ctx, sessions)
    try:
        async with ctx.store.session() as db:
            rows = (await db.exec(select(Grant.state, func.count(col(Grant.id)))
                                  .group_by(Grant.state))).all()
        counts = dict(rows)
        for state in {*GRANT_STATES, *counts}:
            GRANTS.labels(state).set(counts.get(state, 0))
        SIEM_LAG.set(await lag(ctx) if ctx.config.settings.siem.syslog_url else 0)
    except Exception as exc:  # the scrape still answers, with what it has
        SCRAPE_ERRORS.inc()
        log.warning("metrics: database values not refreshed", error=str(exc))


def exposition() -> bytes:
    directory = os.environ.get(MULTIPROCESS_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    node = CollectorRegistry()
    MultiProcessCollector(node, path=directory)  # type: ignore[no-untyped-call]
    return generate_latest(node)


def worker_gone(pid: int, directory: str) -> None:
    """A worker exited: its live gauges stop counting (its counters stay in the sums)."""
    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",)}


def names() -> set[str]:
    """Every series name defined here, as a query spells it (``broker_sessions_total``,
    ``broker_revocation_latency_seconds_bucket``)."""
    return {metric.name + suffix for metric in REGISTRY.collect()
            for suffix in SUFFIXES.get(metric.type, ("",))}
