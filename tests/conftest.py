"""Fixtures for the unit tests: a ``broker init`` directory, the real CLI, an SSH key.

``broker init`` runs once per test session into a template directory; each test gets its own
copy (``broker_dir``), so tests never share a database. ``cli`` runs the installed ``broker``
console script as a subprocess against that copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.pg_kit import PostgresCluster

BROKER = Path(sys.executable).with_name("broker")


class CliResult(NamedTuple):
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without BROKER_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(extra or {})
    return env


def run_broker(args: Sequence[str | os.PathLike[str]], env: Mapping[str, str] | None = None,
               cwd: Path | None = None, timeout: float = 60) -> CliResult:
    proc = subprocess.run([str(BROKER), *map(str, args)], capture_output=True, text=True,
                          env=clean_env(env), cwd=cwd, timeout=timeout, check=False)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


class Cli:
    """``cli("tech", "list")`` runs ``broker --config DIR/broker.toml tech list``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.config = directory / "broker.toml"

    def __call__(self, *args: str | os.PathLike[str], env: Mapping[str, str] | None = None,
                 timeout: float = 60) -> CliResult:
        return run_broker(["--config", self.config, *args], env=env, cwd=self.dir,
                          timeout=timeout)

    def many(self, commands: Iterable[Sequence[str | os.PathLike[str]]],
             env: Mapping[str, str] | None = None) -> list[CliResult]:
        """Run independent commands concurrently (each start-up costs ~1 s of imports)."""
        with ThreadPoolExecutor(max_workers=(os.cpu_count() or 2) + 1) as pool:
            return list(pool.map(lambda argv: self(*argv, env=env), commands))


@pytest.fixture(scope="session")
def broker_run() -> Callable[..., CliResult]:
    """``broker_run([args...], env=..., cwd=...)``: the console script without ``--config``."""
    return run_broker


@pytest.fixture(scope="session")
def cli_for() -> Callable[[Path], Cli]:
    """``cli_for(directory)``: a :class:`Cli` on a broker directory a test made itself."""
    return Cli


@pytest.fixture(scope="session")
def _broker_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("template") / "broker"
    result = run_broker(["init", "--dir", directory, "--public-url", "https://broker.test:8443"])
    assert result.code == 0, result.err
    return directory


@pytest.fixture
def broker_dir(_broker_template: Path, tmp_path: Path) -> Path:
    """A fresh ``broker init`` directory of this test's own (a copy of a session template)."""
    return Path(shutil.copytree(_broker_template, tmp_path / "broker", symlinks=True))


@pytest.fixture
def cli(broker_dir: Path) -> Cli:
    return Cli(broker_dir)


@pytest.fixture(scope="session")
def ssh_keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(private key, public key) made by ssh-keygen, Ed25519, no passphrase."""
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed (apt-get install openssh-client)")
    key = tmp_path_factory.mktemp("keys") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tech@example.org",
                    "-f", str(key)], check=True, capture_output=True)
    return key, key.with_name(key.name + ".pub")


@pytest.fixture
def ssh_pubkey(ssh_keypair: tuple[Path, Path]) -> Path:
    return ssh_keypair[1]


@pytest.fixture(scope="session")
def postgres() -> Iterable[PostgresCluster]:
    """A throwaway PostgreSQL cluster for the whole run; ``postgres.create_database()`` gives
    each test its own database URL."""
    cluster = PostgresCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()
