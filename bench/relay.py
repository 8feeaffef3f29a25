"""Relay benchmark: the broker against a plain OpenSSH ProxyJump bastion, side by side.

    .venv/bin/python bench/relay.py [--size-mib 200] [--rounds 3] [--latency-runs 20]

Starts, on loopback: a device (real sshd), a bastion (a second real sshd used as ProxyJump),
`broker serve` with recording on, and bench/bare_relay.py (asyncssh with nothing else: the
reference for what the product adds). Measures scp upload/download wall time (SFTP-based scp
and legacy `scp -O`), `ssh ... true` setup latency, and the broker's peak RSS (VmHWM).
Writes bench/results/relay-<UTC time>.json and prints a summary with ratios vs the bastion.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.harness import BrokerProcess, SshdDevice, free_port, keygen

RESULTS = Path(__file__).resolve().parent / "results"


def rss_mib(pid: int, field: str = "VmHWM") -> float:
    """The process's peak (VmHWM) or current (VmRSS) resident set, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(args: list[str], client_rss: list[float] | None = None) -> float:
    """Seconds ``args`` took; its peak RSS (with the ssh it runs) appended to client_rss."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    with proc.stderr:
        stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # wait4: the child's own rusage, for its RSS
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped: Popen must not wait again
    if proc.returncode:
        raise SystemExit(f"{shlex.join(args)} failed: {stderr.strip()}")
    if client_rss is not None:
        client_rss.append(usage.ru_maxrss / 1024)
    return seconds


class Paths:
    """The four ways to reach the device, as ssh/scp argument lists."""

    def __init__(self, work: Path, device: SshdDevice, bastion: SshdDevice,
                 broker: BrokerProcess, tech_key: Path, bare_port: int) -> None:
        user = device.user
        self.config = work / "ssh_config"
        self.config.write_text(
            "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
            "  LogLevel ERROR\n  BatchMode yes\n  IdentitiesOnly yes\n"
            f"  IdentityFile {tech_key}\n"
            f"Host bastion\n  HostName 127.0.0.1\n  Port {bastion.port}\n  User {user}\n"
            f"Host device-direct device-via-bastion\n  HostName 127.0.0.1\n"
            f"  Port {device.port}\n  User {user}\n"
            f"Host device-via-bastion\n  ProxyJump bastion\n"
            f"Host broker\n  HostName 127.0.0.1\n  Port {broker.port}\n  User tech+dev\n"
            f"Host bare\n  HostName 127.0.0.1\n  Port {bare_port}\n  User {user}\n")

    def ssh(self, host: str, *command: str) -> list[str]:
        return ["ssh", "-F", str(self.config), host, *command]

    def scp(self, legacy: bool, src: str, dst: str) -> list[str]:
        return ["scp", "-F", str(self.config), *(["-O"] if legacy else []), src, dst]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=20)
    args = parser.parse_args()

    with TemporaryDirectory(prefix="broker-bench-") as tmp:
        work = Path(tmp)
        device = SshdDevice(work / "device").start()
        bastion = SshdDevice(work / "bastion").start()
        broker = BrokerProcess(work / "broker").init()
        bare: subprocess.Popen[str] | None = None
        try:
            tech_key = broker.one_grant(device, "8h")
            for sshd in (device, bastion):
                authorized = sshd.root / "authorized_keys"
                authorized.write_text(authorized.read_text()
                                      + Path(f"{tech_key}.pub").read_text())
            broker.serve()
            assert broker.proc is not None
            bare_port = free_port()
            bare = start_bare_relay(work, bare_port, device)
            paths = Paths(work, device, bastion, broker, tech_key, bare_port)
            result = run(paths, work, args, broker.proc.pid)
        finally:
            if bare is not None:
                bare.terminate()
                bare.wait()
            broker.stop()
            bastion.stop()
            device.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"relay-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"written to {out}")


def start_bare_relay(work: Path, port: int, device: SshdDevice) -> subprocess.Popen[str]:
    host_key = keygen(work / "bare_host_key", "bare-relay")
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("bare_relay.py")), str(port),
         str(host_key), str(device.port), device.user, str(device.login_key)],
        stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("bench/bare_relay.py did not start")
    return proc


def run(paths: Paths, work: Path, args: argparse.Namespace, broker_pid: int) -> dict:
    idle_rss = rss_mib(broker_pid, "VmRSS")
    source = work / "payload.bin"
    with source.open("wb") as handle:
        for _ in range(args.size_mib):
            handle.write(os.urandom(1 << 20))
    routes = {"direct": "device-direct", "bastion": "device-via-bastion", "broker": "broker",
              "bare_relay": "bare"}
    remote = f"/tmp/broker-bench-{os.getpid()}.bin"
    transfers: dict[str, dict[str, list[float]]] = {}
    client_rss: dict[str, list[float]] = {name: [] for name in routes}
    for legacy in (False, True):
        mode = "scp-legacy" if legacy else "scp-sftp"
        for name in routes:
            for direction in ("upload", "download"):
                transfers.setdefault(f"{mode}/{direction}", {}).setdefault(name, [])
        for _ in range(args.rounds):
            for name, host in routes.items():
                up = timed(paths.scp(legacy, str(source), f"{host}:{remote}"), client_rss[name])
                down = timed(paths.scp(legacy, f"{host}:{remote}", str(work / "back.bin")),
                             client_rss[name])
                transfers[f"{mode}/upload"][name].append(up)
                transfers[f"{mode}/download"][name].append(down)
    os.unlink(remote)
    latency: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(args.latency_runs):
        for name, host in routes.items():
            latency[name].append(timed(paths.ssh(host, "true")))
    best = {k: {n: min(v) for n, v in by.items()} for k, by in transfers.items()}
    middle = {k: {n: statistics.median(v) for n, v in by.items()} for k, by in transfers.items()}
    median_latency = {n: statistics.median(v) for n, v in latency.items()}
    summary = {
        "size_mib": args.size_mib,
        "transfer_seconds_best": best,
        "broker_throughput_vs_bastion": {
            k: round(v["bastion"] / v["broker"], 2) for k, v in best.items()},
        "broker_throughput_vs_bastion_medians": {
            k: round(v["bastion"] / v["broker"], 2) for k, v in middle.items()},
        "broker_time_vs_direct": {k: round(v["broker"] / v["direct"], 2)
                                  for k, v in best.items()},
        "bare_relay_throughput_vs_bastion": {
            k: round(v["bastion"] / v["bare_relay"], 2) for k, v in best.items()},
        "setup_latency_median_s": {n: round(v, 4) for n, v in median_latency.items()},
        "broker_setup_vs_bastion": round(median_latency["broker"] / median_latency["bastion"],
                                         2),
        "bare_relay_setup_vs_bastion": round(
            median_latency["bare_relay"] / median_latency["bastion"], 2),
        "broker_idle_rss_mib": round(idle_rss, 1),
        "broker_peak_rss_mib": round(rss_mib(broker_pid), 1),
        "client_peak_rss_mib": {n: round(max(v), 1) for n, v in client_rss.items()},
    }
    return {"benchmark": "relay", "when": datetime.now(UTC).isoformat(),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "openssh": subprocess.run(["ssh", "-V"], capture_output=True,
                                                  text=True).stderr.strip()},
            "raw": {"transfers": transfers, "latency": latency, "client_rss_mib": client_rss},
            "summary": summary}


if __name__ == "__main__":
    main()
