"""Revocation benchmark: N grants ending at the same second on a two-node cluster.

    .venv/bin/python bench/revocation.py [--grants 100] [--lead 40]

Starts a throwaway PostgreSQL, a real sshd device and two `broker serve` nodes sharing the
database. Creates N technicians, each with a grant on the device that starts now and ends at
the same instant T (``--lead`` seconds ahead), opens one live `ssh` session per grant
(alternating nodes), and records when each `ssh` process ends. Latency = end of the ssh
process - T. Writes bench/results/revocation-<UTC time>.json with p50/p99/max per node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from tempfile import TemporaryDirectory

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from broker.config import load_config
from broker.services.context import Context
from broker.services.directory import Directory
from broker.services.requests import Requests
from tests.integration.harness import BrokerProcess, SshdDevice
from tests.pg_kit import PostgresCluster

RESULTS = Path(__file__).resolve().parent / "results"


async def seed(config_file: Path, env: dict[str, str], count: int, key_file: Path,
               end: datetime) -> None:
    """N technicians with one grant each, all ending at ``end`` (in-process: fast)."""
    config = load_config(config_file, environ={**os.environ, **env})
    ctx = Context.open(config)
    try:
        key = asyncssh.read_public_key(str(key_file))
        directory, requests = Directory(ctx, "bench"), Requests(ctx, "bench")
        now = ctx.now()
        for i in range(count):
            await directory.add_technician(f"t{i:03d}", "Bench Medical", [key])
            request = await requests.create(f"t{i:03d}", "dev", end - now, "revocation bench",
                                            start=now)
            await requests.decide(request.id, "approver", True)  # type: ignore[arg-type]
    finally:
        await ctx.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grants", type=int, default=100)
    parser.add_argument("--lead", type=float, default=60.0,
                        help="seconds from the start of seeding to the common end")
    args = parser.parse_args()
    with TemporaryDirectory(prefix="bench-revocation-") as tmp:
        work = Path(tmp)
        postgres = PostgresCluster().start()
        device = SshdDevice(work / "device").start()
        nodes: list[BrokerProcess] = []
        procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        try:
            a = BrokerProcess(work / "a").init().use_database(postgres.create_database(),
                                                              "node-a")
            a.add_approver()
            key = a.add_tech("keyholder")
            a.add_sshd_device("dev", device)
            end = datetime.now(UTC) + timedelta(seconds=args.lead)
            asyncio.run(seed(a.config, a.env, args.grants, Path(f"{key}.pub"), end))
            # each grant's own end, as stored (durations are kept to the second)
            ends = {g["technician"]: datetime.fromisoformat(g["end"]).timestamp()
                    for g in a.cli_json("grant", "list")}
            b = a.another_node(work / "b", "node-b")
            nodes = [a.serve(), b.serve()]
            for i in range(args.grants):
                node = nodes[i % 2]
                argv = [*node.ssh_args(f"t{i:03d}+dev", "keyholder"), "sleep 600"]
                procs.append((node.env["BROKER_BROKER_NODE"],
                              subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL)))
                # staggered: the broker (like sshd's MaxStartups) limits unauthenticated
                # connections per source address, and every client here is 127.0.0.1
                time.sleep(0.15)
            opened = time.time()
            time.sleep(2)
            alive = sum(p.poll() is None for _, p in procs)
            if alive != len(procs):
                raise SystemExit(f"only {alive} of {len(procs)} sessions are live before the end")
            if datetime.now(UTC) >= end:
                raise SystemExit("the sessions opened too late; raise --lead")
            ended: dict[int, float] = {}
            deadline = end.timestamp() + 30
            while len(ended) < len(procs) and time.time() < deadline:
                for i, (_, proc) in enumerate(procs):
                    if i not in ended and proc.poll() is not None:
                        ended[i] = time.time()
                time.sleep(0.002)
            latencies = {i: t - ends[f"t{i:03d}"] for i, t in ended.items()}
            by_node: dict[str, list[float]] = {}
            for i, (node_name, _) in enumerate(procs):
                if i in latencies:
                    by_node.setdefault(node_name, []).append(latencies[i])
            every = list(latencies.values())
            result = {
                "benchmark": "revocation", "when": datetime.now(UTC).isoformat(),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "grants": args.grants, "nodes": 2, "database": "postgresql",
                "sessions_opened_s_before_end": round(end.timestamp() - opened, 2),
                "cut": len(every), "never_cut": len(procs) - len(every),
                "latency_s": {"p50": percentile(every, 50), "p99": percentile(every, 99),
                              "max": max(every), "min": min(every),
                              "mean": statistics.fmean(every)},
                "per_node": {name: {"sessions": len(v), "p50": percentile(v, 50),
                                    "p99": percentile(v, 99), "max": max(v)}
                             for name, v in sorted(by_node.items())},
            }
            RESULTS.mkdir(exist_ok=True)
            out = RESULTS / f"revocation-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps(result, indent=2))
            print(f"wrote {out}")
        finally:
            for _, proc in procs:
                proc.kill()
            for node in nodes:
                node.stop()
            device.stop()
            postgres.stop()


if __name__ == "__main__":
    main()
