"""What the load and fault benchmarks share: the host's description, results files, a tuned
device sshd with a plain account, the broker with one long grant, many asyncssh clients from
many loopback source addresses, and percentiles.

Every benchmark runs its baseline in the same run and writes
``bench/results/<name>-<UTC time>.json`` with the host (cores, load average at the start):
other work on the machine moves absolute numbers, the side-by-side ratios are what count.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import pwd
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.integration.harness import BrokerProcess, SshdDevice

REPOSITORY = Path(__file__).resolve().parent.parent
RESULTS = REPOSITORY / "bench" / "results"
BENCH_USER = "benchuser"
# the device accepts as many logins at once as the benchmarks open (default 10:30:100)
DEVICE_TUNING = "MaxStartups 20000\nMaxSessions 100\n"
FD_LIMIT = 20000


def host_info() -> dict[str, object]:
    """Cores, load average and memory at the start: the machine is shared."""
    mem = {line.split(":")[0]: int(line.split()[1]) // 1024
           for line in Path("/proc/meminfo").read_text().splitlines()
           if line.startswith(("MemTotal:", "MemAvailable:"))}
    return {"hostname": platform.node(), "cpus": os.cpu_count(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "mem_total_mib": mem.get("MemTotal"), "mem_available_mib": mem.get("MemAvailable"),
            "python": platform.python_version(), "asyncssh": asyncssh.__version__,
            "openssh": subprocess.run(["ssh", "-V"], capture_output=True,
                                      text=True).stderr.strip(),
            "broker_commit": subprocess.run(["git", "-C", str(REPOSITORY), "rev-parse", "--short",
                                             "HEAD"], capture_output=True,
                                            text=True).stdout.strip() or None,
            # the broker's [broker] event_loop in this run (the environment overrides it)
            "broker_event_loop": os.environ.get("BROKER_BROKER_EVENT_LOOP", "uvloop")}


def write_result(name: str, result: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def started() -> dict[str, object]:
    return {"when": datetime.now(UTC).isoformat(timespec="seconds"), "host": host_info()}


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def ms(value: float) -> float:
    return round(value * 1000, 2)


def raise_fd_limit(wanted: int = FD_LIMIT) -> int:
    """Raise this process's open-file limit (children inherit it): each session is a few
    descriptors in the client, the broker and sshd."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children: a broker with ``[broker] workers`` > 1 is a supervisor and
    its worker processes."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                         text=True, check=False).stdout
    children = (int(child) for child in out.split())
    return [pid, *(child for child in children if Path(f"/proc/{child}").exists())]


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """The resident memory of ``pid`` and its children, added up."""
    total = 0
    for each in process_tree(pid):
        for line in Path(f"/proc/{each}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                total += int(line.split()[1])
    return total / 1024


def cpu_seconds_of(pids: list[int]) -> float:
    """User and system CPU seconds of these processes, added up."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of ``pid`` and its children (those running now)."""
    return cpu_seconds_of(process_tree(pid))


def gc_pauses(http_port: int) -> dict[str, dict[str, float]]:
    """The broker's garbage-collector pauses so far, from its /metrics
    (``broker_gc_pause_seconds``): by generation, count, seconds in all, and how many took
    longer than 10 and 100 ms."""
    from tests.integration.test_metrics import fetch, samples, value

    status, text = fetch(http_port)
    if status != 200:
        raise RuntimeError(f"the broker's /metrics answered HTTP {status}: {text[:200]}")
    found = samples(text)
    pauses: dict[str, dict[str, float]] = {}
    for name, labels in found:
        if name != "broker_gc_pause_seconds_count":
            continue
        generation = dict(labels)["generation"]
        count = found[(name, labels)]
        pauses[generation] = {
            "count": count,
            "seconds": value(found, "broker_gc_pause_seconds_sum", generation=generation),
            **{f"over_{ms}ms": count - value(found, "broker_gc_pause_seconds_bucket",
                                              generation=generation, le=le)
               for ms, le in (("10", "0.01"), ("100", "0.1"))}}
    return pauses


def gc_pauses_between(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
                      ) -> dict[str, dict[str, float]]:
    """What :func:`gc_pauses` counted between two readings (``seconds`` rounded to ms)."""
    return {generation: {key: round(value - before.get(generation, {}).get(key, 0), 3)
                         for key, value in now.items()}
            for generation, now in sorted(after.items())}


def ensure_bench_user() -> str:
    """A plain device account: /bin/sh, no rc files (root's here start pyenv, which would
    swamp the latency measured). Created when missing (needs root), key auth only."""
    try:
        entry = pwd.getpwnam(BENCH_USER)
    except KeyError:
        if os.geteuid() != 0:
            raise SystemExit(f"user {BENCH_USER!r} is missing and only root can create it: "
                             f"useradd -m -s /bin/sh {BENCH_USER}") from None
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", BENCH_USER], check=True)
        entry = pwd.getpwnam(BENCH_USER)
    if os.geteuid() == 0:
        # '!' (useradd's default) is a locked account, which sshd refuses without PAM
        subprocess.run(["usermod", "-p", "*", BENCH_USER], check=True)
        for rc in (".profile", ".bashrc", ".bash_logout", ".shrc"):
            Path(entry.pw_dir, rc).unlink(missing_ok=True)
    return BENCH_USER


def bench_device(root: Path) -> SshdDevice:
    """A real sshd on loopback logging in BENCH_USER. sshd reads ROOT/authorized_keys with
    that user's rights: ROOT and its parent (the benchmark's temp dir) become traversable."""
    user = ensure_bench_user()
    root.mkdir(parents=True, exist_ok=True)
    for directory in (root.parent, root):
        directory.chmod(0o755)
    device = SshdDevice(root, user=user, extra_config=DEVICE_TUNING).start()
    (root / "authorized_keys").chmod(0o644)
    return device


def authorize(device: SshdDevice, public_key: Path) -> None:
    """Let ``public_key`` log in to the device directly (the baseline's client)."""
    authorized = device.root / "authorized_keys"
    authorized.write_text(authorized.read_text() + public_key.read_text())
    authorized.chmod(0o644)


def broker_with_grant(root: Path, device: SshdDevice, duration: str = "8h",
                      env: dict[str, str] | None = None) -> tuple[BrokerProcess, Path]:
    """`broker init`, technician `tech` with a grant on device `dev`; not serving yet. The
    technician's key also logs in to the device directly, so both sides use one client."""
    broker = BrokerProcess(root).init()
    broker.env.update(env or {})
    with_hospital_policies(broker.root / "policies")
    key = broker.one_grant(device, duration)
    authorize(device, Path(f"{key}.pub"))
    return broker, key


def with_hospital_policies(directory: Path) -> None:
    """A hospital's policy files, as a broker in service has them (every login reads them):
    the shipped examples, then one that lets the benchmark's technician on its device."""
    directory.mkdir(exist_ok=True)
    for shipped in sorted(REPOSITORY.joinpath("policies").glob("*.yaml")):
        shutil.copy(shipped, directory / shipped.name)
    (directory / "zz-bench.yaml").write_text(
        "policies:\n  - name: bench\n    description: the benchmark's technician and device\n"
        "    max_duration: 8h\n")


class Sources:
    """Loopback source addresses for the clients, round robin: real technicians come from
    many addresses, and the broker (like sshd's PerSourceMaxStartups) bounds the logins in
    progress per address."""

    def __init__(self, start: int = 0) -> None:
        self.next = start

    def __call__(self) -> tuple[str, int]:
        n = self.next
        self.next += 1
        return (f"127.1.{(n // 250) % 250}.{n % 250 + 1}", 0)


async def connect(port: int, user: str, key: Path, source: tuple[str, int] | None = None,
                  **options: object) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect(
        "127.0.0.1", port, username=user, client_keys=[str(key)], known_hosts=None,
        agent_path=None, config=None, local_addr=source,
        encryption_algs=["aes128-gcm@openssh.com"], compression_algs=None,
        **options)


def verify_all(broker: BrokerProcess) -> dict[str, object]:
    """`broker recordings verify --all`: its exit status and last lines."""
    done = broker.cli("recordings", "verify", "--all", check=False)
    return {"exit_status": done.code, "ok": done.code == 0,
            "stdout_tail": done.out.strip().splitlines()[-3:],
            "stderr_tail": done.err.strip().splitlines()[-3:]}


def log_digest(log: str) -> dict[str, Any]:
    """Why the broker's sessions ended, and its warnings: what to look at when errors > 0."""
    reasons: dict[str, int] = {}
    warnings: list[str] = []
    for line in log.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            warnings.append(line[:300])
            continue
        if event.get("kind") == "session.ended":
            reason = str(event.get("reason"))
            reasons[reason] = reasons.get(reason, 0) + 1
        elif event.get("level") in ("warning", "error", "critical"):
            warnings.append(line[:300])
    return {"broker_session_end_reasons": reasons, "broker_warnings": warnings[:20],
            "broker_warning_count": len(warnings)}


@contextmanager
def stage(name: str) -> Iterator[None]:
    start = time.monotonic()
    print(f"[{datetime.now(UTC):%H:%M:%S}] {name} ...", flush=True)
    yield
    print(f"[{datetime.now(UTC):%H:%M:%S}] {name}: {time.monotonic() - start:.1f} s",
          flush=True)


def which_or_exit(name: str, package: str) -> str:
    found = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists()
                                   else None)
    if not found:
        raise SystemExit(f"{name} is missing (apt-get install {package})")
    return found


def gather_limited(limit: int, *coros: object) -> asyncio.Future[list[object]]:
    semaphore = asyncio.Semaphore(limit)

    async def one(coro: object) -> object:
        async with semaphore:
            return await coro  # type: ignore[misc]

    return asyncio.gather(*(one(c) for c in coros), return_exceptions=True)


@contextmanager
def profiled(broker: BrokerProcess, out: Path) -> Iterator[None]:
    """`broker serve` started inside this block runs under cProfile, writing ``out`` when it
    stops (SIGTERM ends it cleanly). py-spy is not packaged here; cProfile is enough to say
    where the time goes."""
    from tests.integration import harness

    # cProfile writes only at a clean exit: the drain must end before the harness's 30 s
    # (a signed-in web session stays live until the drain's end)
    broker.env["BROKER_BROKER_DRAIN_TIMEOUT"] = "2s"
    wrapper = broker.root / "broker-profiled"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -m cProfile -o {out} "
                       f"{harness.BROKER} \"$@\"\n")
    wrapper.chmod(0o755)
    plain, harness.BROKER = harness.BROKER, str(wrapper)
    try:
        yield
    finally:
        harness.BROKER = plain


def profile_top(stats_file: Path, count: int = 25) -> list[str]:
    """The ``count`` functions with the most time of their own, as pstats prints them."""
    import io
    import pstats

    if not stats_file.exists():
        return ["no profile was written (the broker did not stop cleanly)"]
    text = io.StringIO()
    pstats.Stats(str(stats_file), stream=text).sort_stats("tottime").print_stats(count)
    lines = [line.rstrip() for line in text.getvalue().splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return lines[max(0, start - 2):]
