"""Faults under load, measured: the broker killed, its database restarted, its recordings
disk full, each while sessions run.

    .venv/bin/python bench/faults.py [--only kill9,postgres,diskfull]

(a) kill9: `scp` uploads (the real OpenSSH client, SFTP) loop through the broker next to
    interactive sessions typing time-stamped lines; the broker gets SIGKILL. Every transfer
    finished and every line echoed more than a second before the kill must be in the
    recordings on disk (read straight from the files); after a restart every recording,
    the interrupted ones included, is sealed and `broker recordings verify --all` passes.
(b) postgres: the broker on a throwaway PostgreSQL (tests/pg_kit.py); live interactive
    sessions type while PostgreSQL is stopped and started again and a prober opens a new
    session every quarter second. Live sessions within their grant must not be cut; new
    sessions are refused while the database is away, and accepted again after.
(c) diskfull: the recordings directory on a small tmpfs (root only) fills up under live
    sessions. Every live session must be cut within a second of the disk filling, new ones
    refused; after space is freed, every sealed recording verifies.

The baseline here is the requirement itself (each a pass/fail with measured times).
Writes bench/results/faults-<UTC time>.json and prints one line per check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from broker.aio import within

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._faultkit import (
    Typist,
    end_reasons,
    failure_to_cut,
    free_bytes,
    open_typists,
    recorded_text,
    recording_dirs,
    sources,
    ssh_options,
    try_session,
    wait_sealed,
)
from bench._kit import (
    bench_device,
    broker_with_grant,
    connect,
    raise_fd_limit,
    stage,
    started,
    verify_all,
    write_result,
)
from tests.integration.harness import BrokerProcess

SCENARIOS = ("kill9", "postgres", "diskfull")
# ends when its output is gone (base64 dies of SIGPIPE): a cut session leaves no loop behind
PUSH = "while head -c 30000 /dev/urandom | base64; do sleep 0.02; done"


# -- (a) kill -9 during scp transfers ----------------------------------------------------
def kill9(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    device = bench_device(work / "device")
    broker, key = broker_with_grant(work / "broker", device)
    run_id = uuid.uuid4().hex[:8]
    payload = work / "payload.bin"
    payload.write_bytes(os.urandom(args.scp_kib * 1024))
    transfers: list[tuple[str, float]] = []  # (remote name, when its scp finished)
    failed_scp = 0
    try:
        broker.serve()
        assert broker.proc is not None

        async def load() -> tuple[list[Typist], float]:
            typists = await open_typists(broker.port, key, args.typists)
            stop = asyncio.Event()
            tasks = [asyncio.ensure_future(t.run(0.2, stop)) for t in typists]

            async def scp_loop(loop_no: int) -> None:
                nonlocal failed_scp
                n = 0
                while not stop.is_set():
                    n += 1
                    name = f"bench-faults-{run_id}-{loop_no}-{n}.bin"
                    proc = await asyncio.create_subprocess_exec(
                        "scp", "-q", "-P", str(broker.port), *ssh_options(broker, key),
                        str(payload), f"tech+dev@127.0.0.1:/tmp/{name}",
                        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                    if await proc.wait() == 0:
                        transfers.append((name, time.time()))
                    else:
                        failed_scp += 1

            loops = [asyncio.ensure_future(scp_loop(i)) for i in range(args.transfers)]
            await asyncio.sleep(args.load_seconds)
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGKILL)
            killed_at = time.time()
            broker.proc.wait(10)
            stop.set()
            await asyncio.gather(*tasks, *loops, return_exceptions=True)
            for t in typists:
                with contextlib.suppress(Exception):
                    await t.session.close()
            return typists, killed_at

        with stage("kill9: load, then SIGKILL"):
            typists, killed_at = asyncio.run(load())
        on_disk = recorded_text(broker)
        everything = b"\n".join(on_disk.values())
        unsealed = sum(not (d / "manifest.sig").exists() for d in on_disk)

        def missing_ages(items: list[tuple[str, float]]) -> list[float]:
            return [round(killed_at - at, 3) for name, at in items
                    if at <= killed_at and name.encode() not in everything]

        lines = [e for t in typists for e in t.echoed]
        missing_transfers, missing_lines = missing_ages(transfers), missing_ages(lines)
        with stage("kill9: restart, seal"):
            broker.serve()
            sealed, seal_seconds = wait_sealed(broker, 60)
        reasons = end_reasons(broker)
        caught_up = broker.serve_log().count('"recording.head_caught_up"')
        broker.stop()
        verified = verify_all(broker)
    finally:
        broker.stop()
        device.stop()
        for leftover in Path("/tmp").glob(f"bench-faults-{run_id}-*"):
            leftover.unlink(missing_ok=True)
    worst = max(missing_transfers + missing_lines, default=0.0)
    return {
        "transfers_before_kill": len(transfers), "scp_failed_at_kill": failed_scp,
        "lines_echoed_before_kill": len(lines),
        "transfers_missing_from_recordings": len(missing_transfers),
        "lines_missing_from_recordings": len(missing_lines),
        "oldest_missing_item_age_s": worst,
        "recordings": len(on_disk), "unsealed_after_kill": unsealed,
        "sealed_after_restart": sealed, "seal_seconds_after_restart": round(seal_seconds, 2),
        "end_reasons": reasons, "verify_all": verified,
        "chain_head_caught_up_at_restart": caught_up,
        "checks": {"recorded_up_to_1s_before_kill": worst <= 1.0,
                   "sealed_after_restart": sealed, "verify_all_ok": bool(verified["ok"]),
                   "some_recordings_were_interrupted": reasons.get("interrupted", 0) > 0},
    }


# -- (b) PostgreSQL restarted under load ---------------------------------------------------
def postgres(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from tests.pg_kit import PostgresCluster

    cluster = PostgresCluster().start()
    device = bench_device(work / "device")
    broker = BrokerProcess(work / "broker").init()
    try:
        broker.use_database(cluster.create_database(), "node-a")
        key = broker.one_grant(device, "8h")
        broker.serve()
        probes: list[dict[str, Any]] = []
        marks: dict[str, float] = {}

        async def load() -> list[Typist]:
            typists = await open_typists(broker.port, key, args.sessions)
            stop = asyncio.Event()
            tasks = [asyncio.ensure_future(t.run(0.2, stop)) for t in typists]
            watchers = [asyncio.ensure_future(t.watch()) for t in typists]

            async def prober() -> None:
                while not stop.is_set():
                    start = time.time()
                    ok, said = await try_session(broker.port, key)
                    probes.append({"start": start, "end": time.time(), "ok": ok, "said": said})
                    with contextlib.suppress(TimeoutError):
                        await within(0.25, stop.wait())

            probing = asyncio.ensure_future(prober())
            loop = asyncio.get_running_loop()
            await asyncio.sleep(3)
            marks["outage_begins"] = time.time()
            await loop.run_in_executor(None, cluster.pause)
            marks["database_down"] = time.time()
            await asyncio.sleep(args.outage_seconds)
            marks["restart_begins"] = time.time()
            await loop.run_in_executor(None, cluster.resume)
            marks["database_up"] = time.time()
            await asyncio.sleep(args.after_seconds)
            stop.set()
            await asyncio.gather(*tasks, probing, return_exceptions=True)
            for w in watchers:
                w.cancel()
            for t in typists:
                with contextlib.suppress(Exception):
                    await t.session.close()
            return typists

        with stage(f"postgres: {args.sessions} live sessions, a restart of PostgreSQL"):
            typists = asyncio.run(load())
    finally:
        broker.stop()
        device.stop()
        cluster.stop()
    down, up = marks["database_down"], marks["database_up"]
    during = [p for p in probes if p["start"] >= down and p["end"] <= marks["restart_begins"]]
    after = [p for p in probes if p["start"] >= up]
    first_ok_after = next((p for p in after if p["ok"]), None)
    cut = [t for t in typists if t.error is not None]
    echoed_during = sum(1 for t in typists for _, at in t.echoed if down <= at <= up)
    return {
        "live_sessions": len(typists), "live_sessions_cut": len(cut),
        "cut_errors": sorted({t.error or "" for t in cut})[:5],
        "outage_s": round(up - marks["outage_begins"], 2),
        "lines_echoed_while_database_down": echoed_during,
        "probes_during_outage": len(during),
        "probes_during_outage_accepted": sum(p["ok"] for p in during),
        "refusal_said": sorted({p["said"] for p in during if not p["ok"]})[:3],
        "probes_after": len(after), "probes_after_refused": sum(not p["ok"] for p in after),
        "first_accepted_s_after_database_up": round(first_ok_after["end"] - up, 2)
        if first_ok_after else None,
        "checks": {"live_sessions_not_cut": not cut and echoed_during > 0,
                   "new_sessions_refused_during_outage":
                       bool(during) and not any(p["ok"] for p in during),
                   "new_sessions_accepted_after": first_ok_after is not None},
    }


# -- (c) the recordings disk full ------------------------------------------------------------
def diskfull(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    if os.geteuid() != 0:
        return {"skipped": "mounting a tmpfs needs root", "checks": {}}
    disk = work / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.disk_mib}m", "tmpfs",
                              str(disk)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        return {"skipped": f"mount refused: {mounted.stderr.strip()}", "checks": {}}
    device = bench_device(work / "device")
    broker, key = broker_with_grant(work / "broker", device,
                                    env={"BROKER_RECORDING_DIR": str(disk / "recordings")})
    ballast = disk / "ballast"
    ballast.write_bytes(b"\0" * 512 * 1024)  # what the operator frees afterwards
    try:
        broker.serve()

        async def load() -> dict[str, Any]:
            typists = await open_typists(broker.port, key, args.sessions)
            stop = asyncio.Event()
            tasks = [asyncio.ensure_future(t.run(0.2, stop)) for t in typists]
            watchers = [asyncio.ensure_future(t.watch()) for t in typists]
            conn = await connect(broker.port, "tech+dev", key, sources())
            pusher = await conn.create_process(PUSH, encoding=None)
            pusher_ended: list[float] = []

            async def drain_pusher() -> None:
                with contextlib.suppress(Exception):
                    while await pusher.stdout.read(65536):
                        pass
                pusher_ended.append(time.time())

            draining = asyncio.ensure_future(drain_pusher())
            full_at = None
            trace: list[tuple[float, int]] = []  # (time, free bytes), at each change
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                free = free_bytes(disk)
                if not trace or trace[-1][1] != free:
                    trace.append((time.time(), free))
                if full_at is None and free == 0:
                    full_at = time.time()
                if all(t.ended_at for t in typists) and pusher_ended:
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.5)
            refused = await try_session(broker.port, key)
            ballast.unlink()
            await asyncio.sleep(3)
            accepted = await try_session(broker.port, key)
            stop.set()
            await asyncio.gather(*tasks, draining, return_exceptions=True)
            for w in watchers:
                w.cancel()
            conn.close()
            for t in typists:
                with contextlib.suppress(Exception):
                    await t.session.close()
            ends = [t.ended_at for t in typists] + pusher_ended[:1]
            return {"full_at": full_at, "ends": ends, "trace": trace, "refused": refused,
                    "accepted": accepted, "errors": sorted({t.error or "" for t in typists})}

        with stage(f"diskfull: {args.sessions} live sessions and a pusher on a "
                   f"{args.disk_mib} MiB tmpfs"):
            out = asyncio.run(load())
        broker.stop()
        recordings = recording_dirs(disk / "recordings")
        sealed = sum((d / "manifest.sig").exists() for d in recordings)
        verified = verify_all(broker)
        reasons = end_reasons(broker, disk / "recordings")
        own = failure_to_cut(broker.serve_log())
    finally:
        broker.stop()
        device.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)
    full_at = out["full_at"]
    cuts = [round(e - full_at, 3) for e in out["ends"] if e and full_at] if full_at else []
    never_cut = sum(1 for e in out["ends"] if not e)
    refused_ok, refused_said = out["refused"]
    return {
        "disk_mib": args.disk_mib, "live_sessions": args.sessions + 1,
        "disk_full_detected": full_at is not None,
        "cut_after_full_s": {"max": max(cuts, default=None), "min": min(cuts, default=None),
                             "all": sorted(cuts)},
        "never_cut": never_cut,
        "cut_after_own_recording_failed_s": {"max": max(own, default=None), "all": own},
        "free_bytes_trace": [(round(t - (full_at or t), 3), free) for t, free in out["trace"]],
        "new_session_while_full": {"accepted": refused_ok, "said": refused_said},
        "new_session_after_space_freed": {"accepted": out["accepted"][0],
                                          "said": out["accepted"][1]},
        "recordings": len(recordings), "sealed": sealed, "end_reasons": reasons,
        "verify_all": verified,
        "checks": {"cut_within_1s_of_disk_full": bool(cuts) and never_cut == 0
                   and max(cuts) <= 1.0,
                   "cut_within_1s_of_own_recording_failing": bool(own) and max(own) <= 1.0,
                   "new_sessions_refused": not refused_ok,
                   "accepted_after_space_freed": bool(out["accepted"][0]),
                   "sealed_recordings_verify": bool(verified["ok"])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios (default all: {','.join(SCENARIOS)})")
    parser.add_argument("--transfers", type=int, default=4,
                        help="kill9: scp upload loops (default 4)")
    parser.add_argument("--scp-kib", type=int, default=2048,
                        help="kill9: KiB per uploaded file (default 2048)")
    parser.add_argument("--typists", type=int, default=4,
                        help="kill9: interactive sessions alongside (default 4)")
    parser.add_argument("--load-seconds", type=float, default=8,
                        help="kill9: seconds of load before the kill (default 8)")
    parser.add_argument("--sessions", type=int, default=20,
                        help="postgres, diskfull: live interactive sessions (default 20)")
    parser.add_argument("--outage-seconds", type=float, default=5,
                        help="postgres: seconds PostgreSQL stays down (default 5)")
    parser.add_argument("--after-seconds", type=float, default=8,
                        help="postgres: seconds of load after it is back (default 8)")
    parser.add_argument("--disk-mib", type=int, default=4,
                        help="diskfull: tmpfs size in MiB (default 4)")
    args = parser.parse_args()
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen:
        parser.error(f"--only: unknown scenario {unknown[0]!r}" if unknown
                     else "--only: no scenario given")
    if min(args.transfers, args.scp_kib, args.typists, args.sessions, args.disk_mib) < 1 \
            or min(args.load_seconds, args.outage_seconds, args.after_seconds) <= 0:
        parser.error("counts, sizes and durations must be positive")
    raise_fd_limit()
    head = started()
    scenarios: dict[str, Any] = {}
    runners = {"kill9": kill9, "postgres": postgres, "diskfull": diskfull}
    for name in chosen:
        with TemporaryDirectory(prefix=f"bench-faults-{name}-") as tmp:
            scenarios[name] = runners[name](Path(tmp), args)
    verdicts = {f"{name}/{check}": ok for name, result in scenarios.items()
                for check, ok in result["checks"].items()}
    result = {"benchmark": "faults", **head, "options": vars(args), "scenarios": scenarios,
              "summary": {"checks": verdicts, "all_pass": all(verdicts.values())}}
    out = write_result("faults", result)
    for name, res in scenarios.items():
        if "skipped" in res:
            print(f"  {name}: skipped ({res['skipped']})")
    for check, ok in verdicts.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {check}")
    if "kill9" in scenarios:
        k = scenarios["kill9"]
        print(f"  kill9: {k['transfers_before_kill']} transfers and"
              f" {k['lines_echoed_before_kill']} lines before the kill; oldest missing"
              f" {k['oldest_missing_item_age_s']} s; sealed {k['seal_seconds_after_restart']} s"
              " after restart")
    if "postgres" in scenarios:
        p = scenarios["postgres"]
        print(f"  postgres: outage {p['outage_s']} s; {p['live_sessions_cut']} of"
              f" {p['live_sessions']} live sessions cut; {p['probes_during_outage']} probes"
              f" during it, {p['probes_during_outage_accepted']} accepted; first accepted"
              f" {p['first_accepted_s_after_database_up']} s after it was back")
    if "diskfull" in scenarios and "skipped" not in scenarios["diskfull"]:
        d = scenarios["diskfull"]
        print(f"  diskfull: cut {d['cut_after_full_s']['min']}-{d['cut_after_full_s']['max']}"
              f" s after the disk filled; {d['sealed']} of {d['recordings']} sealed")
    print(f"  -> {out}")


if __name__ == "__main__":
    main()
