"""What a firmware probe costs a session's set-up.

    .venv/bin/python bench/firmware_probe.py [--rounds 20]

Starts a real sshd device and `broker serve`, registers the same device twice, ``plain``
(no probe) and ``probed`` (``--probe "cat FILE"``), and times a real ``ssh TECH+DEVICE true``
against each, alternating A/B so that load on the host hits both alike. The before-probe
runs concurrently with the session (its own login to the device), the after-probe once the
session ended, so the difference should be noise. Also reports how long after the session
opened the before-probe's reading was recorded. Writes
bench/results/firmware-probe-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.harness import BrokerProcess, SshdDevice

RESULTS = Path(__file__).resolve().parent / "results"


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_s": round(statistics.median(ordered), 4),
            "p90_s": round(ordered[int(0.9 * (len(ordered) - 1))], 4),
            "min_s": round(ordered[0], 4), "max_s": round(ordered[-1], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        device = SshdDevice(root / "sshd").start()
        fw = root / "sshd" / "firmware-version"
        fw.write_text("BENCH 1.0\n")
        broker = BrokerProcess(root / "broker").init()
        try:
            broker.add_approver()
            broker.add_tech("tech")
            broker.add_sshd_device("plain", device)
            broker.add_sshd_device("probed", device, "--probe", f"cat {fw}")
            broker.grant("tech", "plain", "2h")
            broker.grant("tech", "probed", "2h")
            broker.serve()
            for name in ("plain", "probed"):  # warm up: host key pinned, caches filled
                assert broker.ssh(f"tech+{name}", "true").code == 0
            times: dict[str, list[float]] = {"plain": [], "probed": []}
            for i in range(args.rounds):
                order = ("plain", "probed") if i % 2 == 0 else ("probed", "plain")
                for name in order:
                    started = time.perf_counter()
                    result = broker.ssh(f"tech+{name}", "true")
                    times[name].append(time.perf_counter() - started)
                    assert result.code == 0, result.err
            time.sleep(3)  # the last after-probe
            readings = broker.cli_json("device", "firmware", "history", "probed",
                                       "--limit", "1000")
            assert isinstance(readings, list)
            failed = [r for r in readings if r["text"].startswith("probe failed")]
        finally:
            broker.stop()
            device.stop()
    plain, probed = summary(times["plain"]), summary(times["probed"])
    result = {
        "benchmark": "firmware-probe", "when": datetime.now(UTC).isoformat(),
        "host": platform.node(), "cpus": os.cpu_count(), "rounds": args.rounds,
        "what": "wall time of `ssh TECH+DEVICE true` through the broker, A/B alternating",
        "plain": plain, "probed": probed,
        "median_difference_s": round(probed["median_s"] - plain["median_s"], 4),
        "probe_readings": len(readings), "probe_failures": len(failed),
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"firmware-probe-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
