"""Workers benchmark: aggregate scp throughput through the broker, `[broker] workers = 1`
against `workers = 2`, on the same machine, interleaved.

    .venv/bin/python bench/workers.py [--size-mib 100] [--parallel 4] [--rounds 3]
                                      [--device-user benchuser]

Starts, on loopback, a device (real sshd, as bench/relay.py does) logged in to as an account
with /bin/sh and no rc files (default: `benchuser` when it exists, else the current user),
and `broker serve` with recording on. Each round restarts the broker with 1 and with 2
workers (the order alternates between rounds) and times PARALLEL concurrent `scp` uploads of
SIZE MiB each, then PARALLEL concurrent downloads (stock scp, SFTP protocol). Throughput is
PARALLEL x SIZE over the wall time until the last transfer ends. Writes
bench/results/workers-<UTC time>.json and prints the summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import pwd
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._kit import cpu_seconds_of
from bench.relay import rss_mib
from tests.integration.harness import BrokerProcess, SshdDevice

RESULTS = Path(__file__).resolve().parent / "results"
SERVING = re.compile(r"\((\d+) worker processes: ([\d, ]+)\)")


def default_user() -> str:
    try:
        if pwd.getpwnam("benchuser").pw_shell == "/bin/sh":
            return "benchuser"
    except KeyError:
        pass
    return pwd.getpwuid(os.getuid()).pw_name


def serve(broker: BrokerProcess, workers: int) -> list[int]:
    """Start the broker with ``workers``; the pids of the processes that serve."""
    broker.env["BROKER_BROKER_WORKERS"] = str(workers)
    with contextlib.suppress(TimeoutError):  # a loaded machine: wait longer below
        broker.serve()
    assert broker.proc is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if broker.proc.poll() is not None:
            raise SystemExit(f"broker serve exited: {broker.serve_log()[-2000:]}")
        if workers == 1 and "broker: serving SSH" in broker.serve_log():
            return [broker.proc.pid]
        found = SERVING.search(broker.serve_log())
        if found:
            return [int(pid) for pid in found.group(2).split(", ")]
        time.sleep(0.1)
    raise SystemExit("the broker never served")


def parallel(commands: list[list[str]]) -> float:
    """Wall seconds until every command has ended (all started at once)."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for c in commands]
    for proc, command in zip(procs, commands, strict=True):
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"{' '.join(command)} failed: {err.strip()}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device-user", default=default_user())
    args = parser.parse_args()

    with TemporaryDirectory(prefix="broker-bench-workers-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # the device account reads its authorized_keys in here
        device = SshdDevice(work / "device", user=args.device_user).start()
        (device.root / "authorized_keys").chmod(0o644)
        device.root.chmod(0o755)
        broker = BrokerProcess(work / "broker").init()
        try:
            tech_key = broker.one_grant(device, "8h")
            result = run(args, work, broker, device, tech_key)
        finally:
            broker.stop()
            device.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"workers-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"written to {out}")


def run(args: argparse.Namespace, work: Path, broker: BrokerProcess, device: SshdDevice,
        tech_key: Path) -> dict:
    config = work / "ssh_config"
    config.write_text(
        "Host broker\n  HostName 127.0.0.1\n  User tech+dev\n  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  BatchMode yes\n"
        f"  IdentitiesOnly yes\n  IdentityFile {tech_key}\n  Port {broker.port}\n")
    source = work / "payload.bin"
    with source.open("wb") as handle:
        for _ in range(args.size_mib):
            handle.write(os.urandom(1 << 20))
    remote = [f"/tmp/broker-bench-workers-{os.getpid()}-{i}.bin" for i in range(args.parallel)]
    scp = ["scp", "-F", str(config)]
    times: dict[str, dict[str, list[float]]] = {str(n): {"upload": [], "download": []}
                                                for n in (1, 2)}
    cpu: dict[str, list[float]] = {"1": [], "2": []}
    load_before = os.getloadavg()  # other work on the machine shares its cores
    for round_ in range(args.rounds):
        for workers in ((1, 2) if round_ % 2 == 0 else (2, 1)):
            pids = serve(broker, workers)
            try:
                before = cpu_seconds_of(pids)
                up = parallel([[*scp, str(source), f"broker:{path}"] for path in remote])
                down = parallel([[*scp, f"broker:{path}", str(work / f"back{i}.bin")]
                                 for i, path in enumerate(remote)])
                cpu[str(workers)].append(round(cpu_seconds_of(pids) - before, 2))
                rss = [rss_mib(pid, "VmHWM") for pid in pids]
            finally:
                broker.stop()
            times[str(workers)]["upload"].append(round(up, 3))
            times[str(workers)]["download"].append(round(down, 3))
            print(f"round {round_ + 1}, workers={workers}: upload {up:.2f} s, download"
                  f" {down:.2f} s, peak RSS per process {[round(r) for r in rss]} MiB",
                  flush=True)
    subprocess.run(["ssh", "-F", str(config), "broker", "rm", "-f", *remote],
                   check=False, capture_output=True)
    sessions = Counter(
        e["data"]["node"] for e in map(json.loads, broker.cli(
            "audit", "export", "--format", "jsonl").out.splitlines())
        if e["kind"] == "session.started")
    moved = args.parallel * args.size_mib
    best = {n: {d: min(v) for d, v in by.items()} for n, by in times.items()}
    median = {n: {d: statistics.median(v) for d, v in by.items()} for n, by in times.items()}
    summary = {
        "size_mib_each": args.size_mib, "parallel": args.parallel, "rounds": args.rounds,
        "device_user": args.device_user,
        "aggregate_mib_per_s_best": {n: {d: round(moved / t, 1) for d, t in by.items()}
                                     for n, by in best.items()},
        "aggregate_mib_per_s_median": {n: {d: round(moved / t, 1) for d, t in by.items()}
                                       for n, by in median.items()},
        "workers2_vs_workers1_best": {d: round(best["1"][d] / best["2"][d], 2)
                                      for d in ("upload", "download")},
        "workers2_vs_workers1_median": {d: round(median["1"][d] / median["2"][d], 2)
                                        for d in ("upload", "download")},
        "broker_cpu_seconds_per_round_median": {n: statistics.median(v)
                                                for n, v in cpu.items()},
        "sessions_per_process": dict(sessions),
    }
    return {"benchmark": "workers", "when": datetime.now(UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average_before": [round(x, 2) for x in load_before],
                        "load_average_after": [round(x, 2) for x in os.getloadavg()],
                        "openssh": subprocess.run(["ssh", "-V"], capture_output=True,
                                                  text=True).stderr.strip()},
            "raw": {"seconds": times, "broker_cpu_seconds": cpu}, "summary": summary}


if __name__ == "__main__":
    main()
