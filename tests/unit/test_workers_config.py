"""``[broker] workers``: its default (the cores this process may use, capped by a cgroup CPU
quota) and the values it takes; the one-line refusals are run through ``broker serve`` in
tests/integration/test_workers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from broker.config import default_workers, settings_from
from broker.errors import ConfigError

CORES = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(("cpu_max", "expected"), [
    ("max 100000\n", CORES),
    ("50000 100000\n", 1),  # half a core: one worker
    (f"{CORES * 100000 + 1} 100000\n", CORES),  # a quota above the cores: the cores
    ("100000 100000\n", 1),
    ("garbage\n", CORES),
    (None, CORES),  # no cgroup v2 file
])
def test_default_is_the_usable_cores(tmp_path: Path, cpu_max: str | None,
                                     expected: int) -> None:
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert default_workers(path) == expected


def test_default_with_two_cores_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 cores: rounded up
    assert default_workers(tmp_path / "cpu.max") == min(CORES, 2)


@pytest.mark.parametrize(("raw", "environ", "expected"), [
    ({}, {}, default_workers()),
    ({"broker": {"workers": 4}}, {}, 4),
    ({"broker": {"workers": 1}}, {}, 1),
    ({"broker": {"workers": 2}}, {"BROKER_BROKER_WORKERS": "256"}, 256),
    ({}, {"BROKER_BROKER_WORKERS": " 3 "}, 3),
])
def test_values_taken(raw: dict, environ: dict[str, str], expected: int) -> None:
    config = settings_from(raw, environ, Path("/etc/broker/broker.toml"))
    assert config.settings.broker.workers == expected


@pytest.mark.parametrize("value", [0, 257, -2, True, 2.0, "2x", [2]])
def test_bad_values_name_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from({"broker": {"workers": value}}, {}, Path("/etc/broker/broker.toml"))
    assert str(caught.value) == (
        f"/etc/broker/broker.toml: [broker] workers: expected a whole number of processes"
        f" from 1 to 256 (1: a single process), got {value!r}")


def test_the_service_manager_signals_the_supervisor_alone() -> None:
    """systemd: SIGTERM to the supervisor only (it has the workers drain; a worker also
    takes a second SIGTERM as the same drain), SIGKILL to all after TimeoutStopSec; compose
    and Kubernetes signal PID 1, the supervisor, and name the number of workers."""
    deploy = Path(__file__).resolve().parents[2] / "deploy"
    unit = (deploy / "systemd" / "broker.service").read_text()
    assert "\nKillMode=mixed\n" in unit and "\nKillSignal=SIGTERM\n" in unit
    assert '"serve"' in (deploy / "Containerfile").read_text()  # exec form: PID 1
    for name in ("compose.yaml", "kubernetes/broker.yaml"):
        assert "BROKER_BROKER_WORKERS" in (deploy / name).read_text()
