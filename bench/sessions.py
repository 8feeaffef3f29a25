"""Concurrent interactive sessions: N recorded PTY sessions on one broker node, each typing a
line a second into `cat` on a real sshd device, against the same load straight to the device.

    .venv/bin/python bench/sessions.py [--sessions 1000] [--seconds 60] [--workers 4]

Starts, on loopback: a device (real sshd, MaxStartups raised, a plain /bin/sh account with
no rc files) and `broker serve` (recording every session). The load generator is asyncssh
(bench/_typists.py; thousands of OpenSSH processes would not fit), split over --workers
processes, logging in from many loopback source addresses. First the direct phase (the same
client, the same concurrency, straight to the device's sshd), then the broker phase. For
each: the p50/p99 of the echo round trip (the line typed until the terminal's echo and
cat's copy are both back), errors, and for the broker its RSS per session and CPU.
Targets (issue #18): broker p99 < 25 ms and <= 2x direct, zero errors.
Writes bench/results/sessions-<UTC time>.json and prints a summary with the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._kit import (
    bench_device,
    broker_with_grant,
    cpu_seconds,
    gc_pauses,
    gc_pauses_between,
    log_digest,
    ms,
    percentile,
    raise_fd_limit,
    rss_mib,
    stage,
    started,
    write_result,
)
from bench._typists import Spec, Typists

P99_TARGET_MS = 25.0
RATIO_TARGET = 2.0


def phase(name: str, spec: Spec, workers: int, broker_pid: int | None,
          broker_http: int | None = None) -> dict[str, Any]:
    """Open spec.sessions sessions, type for spec.seconds, close; the numbers of it."""
    idle = rss_mib(broker_pid) if broker_pid else None
    gc_idle = gc_pauses(broker_http) if broker_http else None
    with Typists(spec, workers) as typists:
        with stage(f"{name}: opening {spec.sessions} sessions"):
            opened = typists.open()
        loaded = rss_mib(broker_pid) if broker_pid else None
        gc_loaded = gc_pauses(broker_http) if broker_http else None
        cpu_before = cpu_seconds(broker_pid) if broker_pid else 0.0
        with stage(f"{name}: typing for {spec.seconds:.0f} s"):
            ran = typists.run()
        cpu = cpu_seconds(broker_pid) - cpu_before if broker_pid else None
        peak = rss_mib(broker_pid, "VmHWM") if broker_pid else None
        gc_typed = gc_pauses(broker_http) if broker_http else None
        with stage(f"{name}: closing"):
            closed = typists.close()
    latencies = [s[1] for s in ran["samples"]]
    errors = sum(opened["open_errors"].values()) + sum(ran["errors"].values())
    result: dict[str, Any] = {
        "sessions_wanted": spec.sessions, "sessions_opened": opened["opened"],
        "sessions_closed": closed, "open_seconds": round(opened["open_seconds"], 2),
        "open_errors": opened["open_errors"], "run_errors": ran["errors"], "errors": errors,
        "lines_echoed": len(latencies),
        "lines_per_second": round(len(latencies) / spec.seconds, 1),
        "echo_ms": {"p50": ms(percentile(latencies, 50)), "p90": ms(percentile(latencies, 90)),
                    "p99": ms(percentile(latencies, 99)),
                    "p999": ms(percentile(latencies, 99.9)),
                    "max": ms(max(latencies, default=float("nan"))),
                    "mean": ms(statistics.fmean(latencies)) if latencies else None},
        "client_cpu_seconds": round(ran["client_cpu_seconds"], 1),
        "client_tick_lag_p99_ms": ms(ran["client_tick_lag_p99_s"]),
    }
    if broker_pid and idle is not None and loaded is not None and cpu is not None:
        result["broker"] = {
            "rss_idle_mib": round(idle, 1), "rss_loaded_mib": round(loaded, 1),
            "rss_peak_mib": round(peak or 0, 1),
            "rss_per_session_kib": round((loaded - idle) * 1024 / max(1, opened["opened"]), 1),
            "cpu_seconds_while_typing": round(cpu, 1),
            "cpu_percent_of_one_core": round(100 * cpu / spec.seconds, 1)}
    if gc_idle is not None and gc_loaded is not None and gc_typed is not None:
        result["broker_gc_pauses"] = {"opening": gc_pauses_between(gc_idle, gc_loaded),
                                      "typing": gc_pauses_between(gc_loaded, gc_typed)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000,
                        help="concurrent sessions (default 1000, the issue's)")
    parser.add_argument("--seconds", type=float, default=60,
                        help="how long every session types, a line a second (default 60)")
    parser.add_argument("--workers", type=int, default=4,
                        help="load-generating processes (default 4)")
    parser.add_argument("--open-concurrency", type=int, default=4,
                        help="logins in flight per worker (default 4)")
    parser.add_argument("--broker-workers", type=int, default=1,
                        help="[broker] workers of the broker (default 1, one process)")
    parser.add_argument("--skip-direct", action="store_true",
                        help="no direct baseline (then no ratio)")
    args = parser.parse_args()
    if min(args.sessions, args.workers, args.open_concurrency, args.broker_workers) < 1 or \
            args.seconds <= 0:
        parser.error("--sessions, --seconds, --workers, --open-concurrency and --broker-workers"
                     " must be positive")
    fds = raise_fd_limit()
    head = started()
    with TemporaryDirectory(prefix="bench-sessions-") as tmp:
        work = Path(tmp)
        device = bench_device(work / "device")
        broker, key = broker_with_grant(
            work / "broker", device, env={"BROKER_BROKER_WORKERS": str(args.broker_workers)})
        try:
            broker.serve()
            assert broker.proc is not None
            time.sleep(2)  # the scheduler's first pass, imports settled: an idle RSS
            common: dict[str, Any] = {"seconds": args.seconds, "sessions": args.sessions,
                                      "key": str(key),
                      "open_concurrency": args.open_concurrency}
            direct = None if args.skip_direct else phase(
                "direct", Spec(port=device.port, user=device.user, **common),
                args.workers, None)
            via = phase("broker", Spec(port=broker.port, user="tech+dev", first_source=5000,
                                       **common),
                        args.workers, broker.proc.pid, broker.http_port)
            recordings = len(broker.recordings())
            via["broker_alive_at_end"] = broker.proc.poll() is None
            via.update(log_digest(broker.serve_log()))
        finally:
            broker.stop()
            device.stop()
    p99 = via["echo_ms"]["p99"]
    ratio = round(p99 / direct["echo_ms"]["p99"], 2) if direct else None
    summary = {
        "sessions": args.sessions, "seconds": args.seconds,
        "echo_p50_ms": {"direct": direct["echo_ms"]["p50"] if direct else None,
                        "broker": via["echo_ms"]["p50"]},
        "echo_p99_ms": {"direct": direct["echo_ms"]["p99"] if direct else None,
                        "broker": p99},
        "p99_ratio_broker_vs_direct": ratio,
        "p50_ratio_broker_vs_direct": round(via["echo_ms"]["p50"] / direct["echo_ms"]["p50"], 2)
        if direct else None,
        "errors": {"direct": direct["errors"] if direct else None, "broker": via["errors"]},
        "broker_rss_per_session_kib": via["broker"]["rss_per_session_kib"],
        "broker_cpu_percent_of_one_core": via["broker"]["cpu_percent_of_one_core"],
        "broker_gc_pauses": via.get("broker_gc_pauses"),
        "recordings_written": recordings,
        "targets": {"p99_under_25ms": p99 < P99_TARGET_MS,
                    "p99_at_most_2x_direct": ratio is not None and ratio <= RATIO_TARGET,
                    "zero_errors": via["errors"] == 0
                    and via["sessions_opened"] == args.sessions},
    }
    result = {"benchmark": "sessions", **head, "fd_limit": fds,
              "options": vars(args), "direct": direct, "broker": via, "summary": summary}
    out = write_result("sessions", result)
    print(f"{args.sessions} sessions, a line a second each for {args.seconds:.0f} s")
    if direct:
        print(f"  direct  p50 {direct['echo_ms']['p50']} ms  p99 {direct['echo_ms']['p99']} ms"
              f"  errors {direct['errors']}")
    print(f"  broker  p50 {via['echo_ms']['p50']} ms  p99 {p99} ms  errors {via['errors']}"
          f"  (p99 x{ratio} direct; target < {P99_TARGET_MS} ms and <= {RATIO_TARGET}x)")
    print(f"  broker RSS {via['broker']['rss_idle_mib']} -> {via['broker']['rss_loaded_mib']}"
          f" MiB, {via['broker']['rss_per_session_kib']} KiB per session;"
          f" CPU {via['broker']['cpu_percent_of_one_core']}% of a core")
    for when, pauses in via.get("broker_gc_pauses", {}).items():
        print(f"  broker GC while {when}: " + "; ".join(
            f"gen{g} {int(p['count'])}x {round(p['seconds'] * 1000)} ms"
            f" ({int(p['over_100ms'])} over 100 ms)" for g, p in pauses.items() if p["count"]))
    print("  targets: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}"
                                    for k, v in summary["targets"].items()))
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
