"""Soak: many recorded interactive sessions for a long time; the broker's memory must stay
flat and every recording must be there and verify.

    .venv/bin/python bench/soak.py [--sessions 200] [--minutes 10] [--sample-seconds 10]

Starts, on loopback: a device (real sshd, a plain /bin/sh account) and `broker serve`.
Opens --sessions PTY sessions through the broker and, side by side at the same time, as many
straight to the device (the baseline: the same client, the same host load), each typing a
line a second into `cat` (bench/_typists.py). Samples the broker's RSS every
--sample-seconds and fits a line through the samples (MiB per hour); compares the echo p99
of the first and the last minute on both sides; then closes every session, stops the broker
and runs `broker recordings verify --all`: zero lost (one recording per session) and zero
unverifiable recordings. Writes bench/results/soak-<UTC time>.json and prints a summary.
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
    log_digest,
    ms,
    percentile,
    raise_fd_limit,
    rss_mib,
    stage,
    started,
    verify_all,
    write_result,
)
from bench._typists import Spec, Typists

# flat: the fitted growth over the whole run under 5% of the loaded RSS
FLAT_FRACTION = 0.05


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per hour."""
    if len(samples) < 2:
        return 0.0
    xs, ys = [s[0] for s in samples], [s[1] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    covariance = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    return 0.0 if var == 0 else covariance / var * 3600


def by_minute(samples: list[tuple[float, float]]) -> list[dict[str, float]]:
    minutes: dict[int, list[float]] = {}
    for t, latency in samples:
        minutes.setdefault(int(t // 60), []).append(latency)
    return [{"minute": m, "lines": len(v), "p50_ms": ms(percentile(v, 50)),
             "p99_ms": ms(percentile(v, 99))} for m, v in sorted(minutes.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=200,
                        help="sessions through the broker, and as many direct (default 200)")
    parser.add_argument("--minutes", type=float, default=10, help="how long (default 10)")
    parser.add_argument("--sample-seconds", type=float, default=10,
                        help="broker RSS sampling interval (default 10)")
    parser.add_argument("--workers", type=int, default=2,
                        help="load-generating processes per side (default 2)")
    parser.add_argument("--no-direct", action="store_true",
                        help="no side-by-side direct sessions")
    args = parser.parse_args()
    if args.sessions < 1 or args.minutes <= 0 or args.sample_seconds <= 0 or args.workers < 1:
        parser.error("--sessions, --minutes, --sample-seconds and --workers must be positive")
    seconds = args.minutes * 60
    raise_fd_limit()
    head = started()
    with TemporaryDirectory(prefix="bench-soak-") as tmp:
        work = Path(tmp)
        device = bench_device(work / "device")
        broker, key = broker_with_grant(work / "broker", device, "8h")
        try:
            broker.serve()
            assert broker.proc is not None
            pid = broker.proc.pid
            time.sleep(2)
            idle = rss_mib(pid)
            common: dict[str, Any] = {"sessions": args.sessions, "seconds": seconds,
                                      "key": str(key)}
            via_spec = Spec(port=broker.port, user="tech+dev", first_source=5000, **common)
            direct_spec = Spec(port=device.port, user=device.user, **common)
            with Typists(via_spec, args.workers) as via, \
                    Typists(direct_spec, args.workers) as direct:
                with stage(f"opening {args.sessions} sessions through the broker"):
                    via_opened = via.open()
                if not args.no_direct:
                    with stage(f"opening {args.sessions} sessions straight to the device"):
                        direct_opened = direct.open()
                go = time.time() + 2
                via.start(at=go)
                if not args.no_direct:
                    direct.start(at=go)
                rss: list[tuple[float, float]] = []
                with stage(f"typing for {args.minutes:g} min, sampling the broker's RSS"):
                    while (now := time.time()) < go + seconds:
                        if now >= go:
                            rss.append((round(now - go, 1), round(rss_mib(pid), 2)))
                        time.sleep(min(args.sample_seconds, max(0.1, go + seconds - now)))
                    rss.append((round(time.time() - go, 1), round(rss_mib(pid), 2)))
                via_ran = via.finish()
                direct_ran = None if args.no_direct else direct.finish()
                with stage("closing"):
                    via_closed = via.close()
                    if not args.no_direct:
                        direct.close()
                    else:
                        direct.__exit__()
            time.sleep(2)
            broker.stop()
            recordings = len(broker.recordings())
            digest = log_digest(broker.serve_log())
            with stage("broker recordings verify --all"):
                verified = verify_all(broker)
        finally:
            broker.stop()
            device.stop()
    slope = slope_per_hour(rss)
    fitted_growth = slope * seconds / 3600
    loaded = statistics.fmean(r for _, r in rss[:3]) if rss else float("nan")
    via_errors = sum(via_opened["open_errors"].values()) + sum(via_ran["errors"].values())
    via_minutes = by_minute(via_ran["samples"])
    direct_minutes = by_minute(direct_ran["samples"]) if direct_ran else []
    summary: dict[str, Any] = {
        "sessions": args.sessions, "minutes": args.minutes,
        "broker_rss_mib": {"idle": round(idle, 1), "first": rss[0][1], "last": rss[-1][1],
                           "max": max(r for _, r in rss), "samples": len(rss)},
        "broker_rss_slope_mib_per_hour": round(slope, 2),
        "broker_rss_fitted_growth_mib": round(fitted_growth, 2),
        "echo_p99_ms_first_last_minute": {
            "broker": [via_minutes[0]["p99_ms"], via_minutes[-1]["p99_ms"]],
            "direct": [direct_minutes[0]["p99_ms"], direct_minutes[-1]["p99_ms"]]
            if direct_minutes else None},
        "echo_p99_ms_whole_run": {
            "broker": ms(percentile([s[1] for s in via_ran["samples"]], 99)),
            "direct": ms(percentile([s[1] for s in direct_ran["samples"]], 99))
            if direct_ran else None},
        "errors": {"broker": via_errors,
                   "direct": (sum(direct_opened["open_errors"].values())
                              + sum(direct_ran["errors"].values())) if direct_ran else None},
        "sessions_opened": via_opened["opened"], "sessions_closed": via_closed,
        "recordings": recordings, "lost_recordings": via_opened["opened"] - recordings,
        "verify_all": verified,
        "targets": {
            "rss_flat": abs(fitted_growth) < FLAT_FRACTION * loaded,
            # lost: a session that opened and has no recording (a refused login is an error)
            "zero_lost_recordings": recordings >= via_opened["opened"] > 0,
            "all_recordings_verify": bool(verified["ok"]),
            "zero_errors": via_errors == 0},
    }
    result = {"benchmark": "soak", **head, "options": vars(args),
              "broker_rss_samples": rss, "echo_by_minute": {"broker": via_minutes,
                                                            "direct": direct_minutes},
              "errors_detail": {"broker_open": via_opened["open_errors"],
                                "broker_run": via_ran["errors"], **digest},
              "summary": summary}
    out = write_result("soak", result)
    print(f"{args.sessions} sessions for {args.minutes:g} min (and as many direct alongside)")
    print(f"  broker RSS: idle {idle:.1f} MiB, first {rss[0][1]} MiB, last {rss[-1][1]} MiB,"
          f" slope {slope:+.2f} MiB/h (fitted {fitted_growth:+.2f} MiB over the run)")
    print(f"  echo p99 first/last minute: broker {summary['echo_p99_ms_first_last_minute']}")
    print(f"  recordings {recordings} of {via_opened['opened']} sessions; verify --all"
          f" {'OK' if verified['ok'] else 'FAILED'}; errors {summary['errors']}")
    print("  targets: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}"
                                    for k, v in summary["targets"].items()))
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
