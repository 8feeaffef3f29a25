"""A throwaway PostgreSQL cluster for tests: ``initdb`` + ``pg_ctl`` in a temp dir, on a free
loopback port, trust authentication, stopped and deleted at the end.

PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` system user
(the Debian package creates it) in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.ports import free_port


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresCluster:
    def __init__(self) -> None:
        initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
        if not initdb or not pg_ctl:
            pytest.skip("PostgreSQL server binaries are missing (apt-get install postgresql)")
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.root = Path(tempfile.mkdtemp(prefix="broker-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.user_prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL")
            os.chmod(self.root, 0o755)
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self.user_prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        run = subprocess.run([*self.user_prefix, *argv], capture_output=True, text=True,
                             timeout=120, check=False)
        if run.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {run.stderr.strip() or run.stdout.strip()}")

    def start(self) -> PostgresCluster:
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-sync")
        return self.resume()

    def resume(self) -> PostgresCluster:
        """Start the server (again, after :meth:`pause`) on the same port and data."""
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                   f"-c unix_socket_directories={self.root} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300")
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l",
                  str(self.root / "server.log"), "-w", "-t", "60", "start")
        return self

    def pause(self) -> None:
        """Stop the server, keeping its data (an outage)."""
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        psql = _binary("psql") or "psql"
        run = subprocess.run([psql, "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                              "-d", database, "-Atc", sql], capture_output=True, text=True,
                             timeout=60, check=True)
        return run.stdout.strip()

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"broker_{secrets.token_hex(4)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)
