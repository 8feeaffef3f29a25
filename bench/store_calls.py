"""CPU and wall time of each store call on a session's opening path, one call at a time.

    .venv/bin/python bench/store_calls.py [--calls 200]

`opening.py` says how much CPU the broker spends per session; this says where the store's
share goes. It sets up a broker directory (SQLite, one technician with a grant on a device)
as `opening.py` does, then, in this process, runs each service call a session makes
(`--calls` times, after one warm-up call) and reports the CPU (every thread of this process)
and wall time per call. There is no baseline: the numbers are the broker's own budget, read
against `opening.py`'s CPU per session.
Writes bench/results/store-calls-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._kit import bench_device, broker_with_grant, started, write_result
from broker.audit.logging import configure_logging
from broker.config import load_config
from broker.domain.protocols import Protocol
from broker.recording import SessionRecording, signer_for
from broker.services import readiness, sessions, vendors
from broker.services.context import Context
from broker.services.grants import check_access
from broker.services.ssh_login import login_facts


async def measure(config: Path, calls: int) -> dict[str, dict[str, float]]:
    # JSON log lines rendered as `broker serve` renders them (its cost counts), then dropped
    configure_logging(open(os.devnull, "w"))  # noqa: SIM115
    ctx = Context.open(load_config(config))
    results: dict[str, dict[str, float]] = {}

    async def timed(name: str, call: Callable[[], Awaitable[object]]) -> None:
        await call()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(calls):
            await call()
        results[name] = {"cpu_ms": round(1000 * (time.process_time() - cpu) / calls, 2),
                         "wall_ms": round(1000 * (time.perf_counter() - wall) / calls, 2)}

    try:
        access = await check_access(ctx, "tech", "dev", Protocol.SSH)
        assert access.allowed and access.device is not None and access.grant is not None
        assert access.technician is not None
        grant, tech, device = access.grant, access.technician, access.device
        await timed("login_facts (read)", lambda: login_facts(ctx, "tech", "dev"))
        await timed("login_succeeded (write)", lambda: vendors.login_succeeded(
            ctx, "tech", "dev", client="127.0.0.1:1", method="publickey"))
        await timed("check_access (read)", lambda: check_access(ctx, "tech", "dev",
                                                                Protocol.SSH))
        await timed("device_login (read)", lambda: sessions.device_login(ctx, device.id or 0))
        await timed("new_session_refusal (recordings probe)",
                    lambda: readiness.new_session_refusal(ctx, None))
        opened: list[str] = []
        recordings: list[SessionRecording] = []
        signer = signer_for(ctx.config)

        async def open_one() -> None:
            session_id = sessions.new_session_id(ctx.now())
            recordings.append(SessionRecording.create(
                ctx.config.recordings_dir, session_id, ctx.now(), {"technician": "tech"},
                signer=signer))
            await sessions.open_session(ctx, grant, tech, device, "127.0.0.1:1", "exec",
                                        session_id, session_id)
            opened.append(session_id)

        async def close_one() -> None:
            await recordings.pop().close("closed")
            await sessions.close_session(ctx, opened.pop(), "closed", 0)

        await timed("recording create + open_session (write)", open_one)
        await timed("recording seal + close_session (write)", close_one)
    finally:
        await ctx.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200,
                        help="calls of each, after one warm-up call (default 200)")
    args = parser.parse_args()
    if args.calls < 1:
        parser.error("--calls must be positive")
    head = started()
    with TemporaryDirectory(prefix="bench-store-calls-") as tmp:
        device = bench_device(Path(tmp) / "device")
        try:
            broker, _ = broker_with_grant(Path(tmp) / "broker", device)
            here = Path.cwd()
            os.chdir(broker.root)  # the configuration's relative paths
            try:
                results = asyncio.run(measure(broker.config, args.calls))
            finally:
                os.chdir(here)
        finally:
            device.stop()
    total = round(sum(r["cpu_ms"] for r in results.values()), 2)
    out = write_result("store-calls", {"benchmark": "store-calls", **head,
                                       "options": vars(args), "calls": results,
                                       "summary": {"cpu_ms_per_session": total}})
    for name, r in results.items():
        print(f"  {name:42} CPU {r['cpu_ms']:6.2f} ms  wall {r['wall_ms']:6.2f} ms")
    print(f"  {'a session opened and closed, in all':42} CPU {total:6.2f} ms\n  -> {out}")


if __name__ == "__main__":
    main()
