"""Session opening rate: new sessions a second through the broker against straight to the
device's sshd, with the same client at the same concurrency.

    .venv/bin/python bench/opening.py [--sessions 300] [--concurrency 8] [--rounds 3]

Starts, on loopback: a device (real sshd, MaxStartups raised, a plain /bin/sh account) and
`broker serve` (recording on). A "session" is what a script does: connect, authenticate with
a key, run `true` in an exec channel, read its exit status, disconnect. The asyncssh client
runs in --workers processes, --concurrency sessions in flight in all, from many loopback
source addresses. Rounds alternate direct and broker so both see the same host load.
Target (issue #18): the broker opens sessions at >= 1x the direct rate. With --floor a third
side runs bench/floor_ssh.py, an asyncssh server that only does SSH (it answers `true`
itself): the most any broker on asyncssh could open on this machine.
Writes bench/results/opening-<UTC time>.json and prints the rates and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from tempfile import TemporaryDirectory, gettempdir
from typing import Any

import asyncssh

from broker.aio import within

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._kit import (
    Sources,
    bench_device,
    broker_with_grant,
    connect,
    cpu_seconds_of,
    ms,
    percentile,
    process_tree,
    profile_top,
    profiled,
    raise_fd_limit,
    stage,
    started,
    write_result,
)
from tests.ports import free_port

RATE_TARGET = 1.0
PROFILE_KEPT = Path("/tmp/bench-opening-broker.prof")


async def open_many(port: int, user: str, key: str, count: int, concurrency: int,
                    first_source: int) -> tuple[list[float], dict[str, int]]:
    """Open ``count`` sessions, ``concurrency`` at a time; each one's seconds, and errors."""
    sources = Sources(first_source)
    limit = asyncio.Semaphore(concurrency)
    times: list[float] = []
    errors: dict[str, int] = {}

    async def one() -> None:
        async with limit:
            start = time.perf_counter()
            try:
                async with await connect(port, user, Path(key), sources()) as conn:
                    done = await within(30, conn.run("true"))
                if done.exit_status != 0:
                    raise ConnectionError(f"exit status {done.exit_status}: {done.stderr!r}")
            except (OSError, asyncssh.Error, TimeoutError, ConnectionError) as exc:
                kind = f"{type(exc).__name__}: {str(exc)[:100]}"
                errors[kind] = errors.get(kind, 0) + 1
                return
            times.append(time.perf_counter() - start)

    await asyncio.gather(*(one() for _ in range(count)))
    return times, errors


def start_floor(work: Path, key: Path) -> tuple[subprocess.Popen[str], int]:
    """bench/floor_ssh.py on a free port, authorizing the technician's key."""
    host_key = work / "floor_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
                   check=True)
    port = free_port()
    floor = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("floor_ssh.py")), str(port),
         str(host_key), f"{key}.pub"], stdout=subprocess.PIPE, text=True)
    assert floor.stdout is not None
    if floor.stdout.readline().strip() != "ready":
        floor.kill()
        raise SystemExit("bench/floor_ssh.py did not start")
    return floor, port


def worker(args: tuple[int, str, str, int, int, int]) -> tuple[list[float], dict[str, int]]:
    raise_fd_limit()
    return asyncio.run(open_many(*args))


def burst(pool: ProcessPoolExecutor, workers: int, port: int, user: str, key: str,
          sessions: int, concurrency: int, first_source: int) -> dict[str, Any]:
    share, extra = divmod(sessions, workers)
    per_worker_concurrency = max(1, concurrency // workers)
    jobs = [(port, user, key, share + (w < extra), per_worker_concurrency,
             first_source + w * 10_000) for w in range(workers)]
    start = time.perf_counter()
    results = list(pool.map(worker, jobs))
    wall = time.perf_counter() - start
    times = [t for r in results for t in r[0]]
    errors: dict[str, int] = {}
    for _, errs in results:
        for kind, count in errs.items():
            errors[kind] = errors.get(kind, 0) + count
    return {"wall_s": wall, "opened": len(times), "errors": errors,
            "rate_per_s": len(times) / wall, "times": times}


def file_system(path: Path) -> str:
    """The type of the file system ``path`` is on (``ext4``, ``tmpfs``), from /proc/mounts."""
    best, kind = "", "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _device, mount, fs_type, *_ = line.split()
            inside = (str(path.resolve()).rstrip("/") + "/").startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, fs_type
    return kind


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300,
                        help="sessions per side per round (default 300)")
    parser.add_argument("--concurrency", type=int, default=8,
                        help="sessions in flight, in all (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--workers", type=int, default=2,
                        help="client processes (default 2); concurrency is split over them")
    parser.add_argument("--broker-workers", type=int, default=1,
                        help="[broker] workers of the broker (default 1; sshd uses every core)")
    parser.add_argument("--device-keepalive", type=int, default=10,
                        help="[ssh] device_keepalive of the broker, seconds (default 10, the"
                        " broker's default; 0: it logs in to the device for every session)")
    parser.add_argument("--floor", action="store_true",
                        help="also time bench/floor_ssh.py, asyncssh doing SSH and nothing else")
    parser.add_argument("--recordings-dir", type=Path, default=None,
                        help="[recording] dir of the broker (default: in the run's temp dir); a"
                        " tmpfs here says what durable recordings on the disk cost a session")
    parser.add_argument("--profile", action="store_true",
                        help="run the broker under cProfile; its top functions go in the JSON")
    args = parser.parse_args()
    if args.device_keepalive < 0:
        parser.error("--device-keepalive must be 0 or more")
    if min(args.sessions, args.concurrency, args.rounds, args.workers, args.broker_workers) < 1:
        parser.error("--sessions, --concurrency, --rounds, --workers and --broker-workers must"
                     " be positive")
    if args.profile and args.broker_workers > 1:
        parser.error("--profile profiles one broker process: use --broker-workers 1")
    if args.recordings_dir is not None and (
            not args.recordings_dir.is_dir() or any(args.recordings_dir.iterdir())):
        parser.error(f"--recordings-dir {args.recordings_dir}: not an empty directory")
    if args.concurrency < args.workers:
        parser.error("--concurrency must be at least --workers")
    raise_fd_limit()
    head = started()
    runs: dict[str, list[dict[str, Any]]] = {"direct": [], "broker": []}
    if args.floor:
        runs["floor"] = []
    with TemporaryDirectory(prefix="bench-opening-") as tmp:
        work = Path(tmp)
        device = bench_device(work / "device")
        broker, key = broker_with_grant(
            work / "broker", device, env={"BROKER_BROKER_WORKERS": str(args.broker_workers),
                                          "BROKER_SSH_DEVICE_KEEPALIVE":
                                              str(args.device_keepalive),
                                          **({"BROKER_RECORDING_DIR":
                                              str(args.recordings_dir.resolve())}
                                             if args.recordings_dir else {})})
        stats = work / "broker.prof"
        floor: subprocess.Popen[str] | None = None
        try:
            with profiled(broker, stats) if args.profile else contextlib.nullcontext():
                broker.serve()
            time.sleep(2)
            sides = {"direct": (device.port, device.user), "broker": (broker.port, "tech+dev")}
            if args.floor:
                floor, floor_port = start_floor(work, key)
                sides["floor"] = (floor_port, "tech")
            with ProcessPoolExecutor(args.workers) as pool:
                for port, user in sides.values():  # warm: imports, caches, the pool
                    burst(pool, args.workers, port, user, str(key), args.workers * 2,
                          args.workers, 90_000)
                source = 0
                for r in range(args.rounds):
                    for name, (port, user) in sides.items():
                        assert broker.proc is not None
                        measured = floor if name == "floor" else broker.proc
                        assert measured is not None
                        pids = process_tree(measured.pid)
                        cpu = cpu_seconds_of(pids)
                        with stage(f"round {r + 1}: {args.sessions} sessions {name}"):
                            runs[name].append(burst(pool, args.workers, port, user, str(key),
                                                    args.sessions, args.concurrency, source))
                        runs[name][-1]["broker_cpu_s"] = cpu_seconds_of(pids) - cpu
                        source += 1000
            recordings = len(broker.recordings())
        finally:
            if floor is not None:
                floor.terminate()
                floor.wait(10)
            broker.stop()
            device.stop()
        top = profile_top(stats) if args.profile else None
        if args.profile and stats.exists():  # for pstats: callers, callees
            shutil.copy(stats, PROFILE_KEPT)
    side: dict[str, dict[str, Any]] = {}
    for name, bursts in runs.items():
        times = [t for b in bursts for t in b["times"]]
        side[name] = {
            "rates_per_s": [round(b["rate_per_s"], 1) for b in bursts],
            "rate_median_per_s": round(statistics.median(b["rate_per_s"] for b in bursts), 1),
            "open_ms": {"p50": ms(percentile(times, 50)), "p99": ms(percentile(times, 99))},
            "opened": sum(b["opened"] for b in bursts),
            "errors": sum(sum(b["errors"].values()) for b in bursts),
            "error_kinds": {k: v for b in bursts for k, v in b["errors"].items()},
            # the broker's own CPU (every worker; the floor server's on the floor side) per
            # session opened in this side's rounds
            "broker_cpu_ms_per_session": round(1000 * sum(b["broker_cpu_s"] for b in bursts)
                                               / max(1, sum(b["opened"] for b in bursts)), 2)}
    ratio = round(side["broker"]["rate_median_per_s"] / side["direct"]["rate_median_per_s"], 2)
    summary = {"sessions_per_round": args.sessions, "concurrency": args.concurrency,
               "rounds": args.rounds,
               "rate_per_s": {n: s["rate_median_per_s"] for n, s in side.items()},
               "rate_ratio_broker_vs_direct": ratio,
               **({"rate_ratio_floor_vs_direct": round(
                   side["floor"]["rate_median_per_s"] / side["direct"]["rate_median_per_s"], 2)}
                  if "floor" in side else {}),
               "open_p50_ms": {n: s["open_ms"]["p50"] for n, s in side.items()},
               "broker_cpu_ms_per_opening": side["broker"]["broker_cpu_ms_per_session"],
               "errors": {n: s["errors"] for n, s in side.items()},
               "recordings_written": recordings,
               "targets": {"rate_at_least_1x_direct": ratio >= RATE_TARGET,
                           "zero_errors": side["broker"]["errors"] == 0}}
    recordings = args.recordings_dir or Path(gettempdir())
    options = {**vars(args), "recordings_dir": str(args.recordings_dir or "")}
    result = {"benchmark": "opening", **head, "options": options,
              "recordings_file_system": file_system(recordings), "sides": side,
              "summary": summary, **({"broker_profile_top": top} if top else {})}
    out = write_result("opening", result)
    print(f"sessions opened a second, {args.concurrency} in flight, {args.rounds} rounds of"
          f" {args.sessions}:")
    for name, s in side.items():
        print(f"  {name:6}  {s['rate_median_per_s']}/s (rounds {s['rates_per_s']})"
              f"  open p50 {s['open_ms']['p50']} ms p99 {s['open_ms']['p99']} ms"
              f"  errors {s['errors']}  broker CPU {s['broker_cpu_ms_per_session']} ms/session")
    print(f"  broker/direct rate x{ratio} (target >= {RATE_TARGET}x): "
          f"{'PASS' if ratio >= RATE_TARGET else 'FAIL'}")
    if "floor" in side:
        print(f"  floor/direct rate x{summary['rate_ratio_floor_vs_direct']}: asyncssh alone")
    if top:
        print("\n".join(["  broker profile (own time):", *top[:20]]))
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
