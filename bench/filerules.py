"""What file transfer rules (policy key ``files``) and upload scanning cost the relay.

    .venv/bin/python bench/filerules.py [--size-mib 100] [--rounds 3] [--no-scan]

Starts a real sshd device and `broker serve` (recording on) with two device entries for the
same sshd: ``dev-open`` (no file rules: the relay is the plain byte pump) and ``dev-rules``
(max_size, deny_names and paths that all let the file through: every packet is checked by the
guard). Uploads and downloads one file with SFTP-based scp, legacy ``scp -O`` and ``sftp``,
alternating the two devices round by round, and reports median wall times and the ratio
rules/open. Unless --no-scan, a second broker with ``[scan]`` pointed at a real c-icap +
clamd (tests/icap_kit.py) uploads the same file to ``dev-open`` (held, scanned, then sent to
the device): the ratio scan/open is the cost of the scan. Writes
bench/results/filerules-<UTC time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from datetime import UTC, datetime
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.relay import RESULTS, timed
from tests.icap_kit import ICAPScanner
from tests.integration.harness import BrokerProcess, SshdDevice

POLICY = """\
policies:
  - name: rules
    devices: {{names: [dev-rules]}}
    files:
      max_size: 10G
      deny_names: ["*.exe", "*.dll", "secret*"]
      paths: ["{work}/**", "/opt/firmware/*"]
  - name: open
    devices: {{names: [dev-open]}}
"""
DEVICES = ("dev-open", "dev-rules")


def commands(config: Path, work: Path, device: str, src: Path) -> dict[str, list[str]]:
    target = work / f"up-{device}.bin"
    back = work / f"down-{device}.bin"
    base = ["-F", str(config)]
    batch = work / f"batch-{device}"
    batch.write_text(f"put {src} {target}\nget {target} {back}\n")
    return {
        "scp_upload": ["scp", *base, str(src), f"{device}:{target}"],
        "scp_download": ["scp", *base, f"{device}:{target}", str(back)],
        "scp_legacy_upload": ["scp", "-O", *base, str(src), f"{device}:{target}"],
        "scp_legacy_download": ["scp", "-O", *base, f"{device}:{target}", str(back)],
        "sftp_put_get": ["sftp", *base, "-b", str(batch), device],
    }


def start_broker(root: Path, work: Path, device: SshdDevice, env: dict[str, str]
                 ) -> tuple[BrokerProcess, Path]:
    broker = BrokerProcess(root).init()
    broker.env.update(env)
    (broker.root / "policies").mkdir(exist_ok=True)
    (broker.root / "policies" / "files.yaml").write_text(POLICY.format(work=work))
    broker.add_approver()
    key = broker.add_tech("tech")
    for name in DEVICES:
        broker.add_sshd_device(name, device)
        broker.grant("tech", name, "8h", "--protocols", "sftp,scp")
    broker.serve()
    config = root / "ssh_config"
    config.write_text(
        "Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n  BatchMode yes\n  IdentitiesOnly yes\n"
        f"  IdentityFile {key}\n  HostName 127.0.0.1\n  Port {broker.port}\n"
        + "".join(f"Host {d}\n  User tech+{d}\n" for d in DEVICES))
    return broker, config


UPLOADS = ("scp_upload", "scp_legacy_upload", "sftp_put_get")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-scan", action="store_true")
    args = parser.parse_args()
    with TemporaryDirectory(prefix="bench-files-") as tmp:
        work = Path(tmp)
        device = SshdDevice(work / "device").start()
        procs: list[BrokerProcess] = []
        scanner = None
        try:
            broker, config = start_broker(work / "broker", work, device, {})
            procs.append(broker)
            configs = {"dev-open": config, "dev-rules": config}
            if not args.no_scan:
                scanner = ICAPScanner(work / "icap").start()
                scanning, scan_config = start_broker(
                    work / "scanning", work, device,
                    {"BROKER_SCAN_ICAP_URL": scanner.url, "BROKER_SCAN_MAX_SIZE": "4G",
                     "BROKER_SCAN_TIMEOUT": "10m"})
                procs.append(scanning)
                configs["scan"] = scan_config
            src = work / "payload.bin"
            with src.open("wb") as out:
                for _ in range(args.size_mib):
                    out.write(os.urandom(1 << 20))
            runs: dict[str, dict[str, list[float]]] = {d: {} for d in configs}
            for index in range(args.rounds):
                order = list(configs) if index % 2 == 0 else list(configs)[::-1]
                for name in order:
                    device_name = "dev-open" if name == "scan" else name
                    for label, argv in commands(configs[name], work, device_name,
                                                src).items():
                        if name == "scan" and label not in UPLOADS:
                            continue
                        runs[name].setdefault(label, []).append(timed(argv))
            medians = {d: {k: statistics.median(v) for k, v in r.items()}
                       for d, r in runs.items()}
            ratios = {k: medians["dev-rules"][k] / medians["dev-open"][k]
                      for k in medians["dev-open"]}
            scan_ratios = {k: medians["scan"][k] / medians["dev-open"][k]
                           for k in medians.get("scan", {})}
        finally:
            for proc in procs:
                proc.stop()
            if scanner is not None:
                scanner.stop()
            device.stop()
    result = {
        "benchmark": "filerules", "when": datetime.now(UTC).isoformat(),
        "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
                 "python": platform.python_version()},
        "size_mib": args.size_mib, "rounds": args.rounds,
        "seconds_median": medians, "seconds_all": runs, "ratio_rules_vs_open": ratios,
        "ratio_scan_vs_open": scan_ratios,
        "note": "dev-open: no file rules, scanning off (the plain pump); dev-rules: every"
                " packet checked; scan: a broker with [scan] (c-icap + clamd on loopback),"
                " no rules: uploads held, scanned, then sent (sftp_put_get: the get is not"
                " scanned).",
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"filerules-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for label, ratio in ratios.items():
        print(f"{label:22s} open {medians['dev-open'][label]:6.2f}s  rules"
              f" {medians['dev-rules'][label]:6.2f}s  ratio {ratio:.2f}")
    for label, ratio in scan_ratios.items():
        print(f"{label:22s} open {medians['dev-open'][label]:6.2f}s  scan"
              f" {medians['scan'][label]:6.2f}s  ratio {ratio:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
