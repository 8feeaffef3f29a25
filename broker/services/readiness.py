"""Is this node ready for new sessions? ``/readyz`` asks, and load balancers act on it: the
database answers and is at the current migration, every key is readable, the recordings
directory takes writes, and the node is not draining. Each problem is one line naming what
is wrong (never a path or a secret: the answer is public)."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

from broker.aio import within
from broker.credentials.keys import KeyPaths
from broker.errors import StoreError
from broker.services.context import Context
from broker.store.engine import head_revision

DATABASE_TIMEOUT = 2.0  # seconds
# seconds a passed probe of the recordings directory stands for the new sessions after it
# (a burst of logins makes one probe, not one each; the flusher's failures end it at once)
PROBE_FRESH = 1.0
log = structlog.get_logger("broker.readiness")


DRAINING_REFUSAL = ("this broker node is draining for maintenance and takes no new sessions;"
                    " connect again to reach another node")


DATABASE_REFUSAL = ("this broker node cannot reach its database right now, so no new session"
                    " can be checked or opened; try again shortly")


@dataclass
class NodeState:
    """What this node is doing, as far as taking new work goes."""

    draining: bool = False
    # the last error of the recordings directory, until a probe finds it taking writes again
    recording_error: str | None = None
    # the database does not answer (set and cleared by the server's watch)
    database_error: str | None = None
    # when the recordings directory last passed a probe (monotonic seconds)
    probed_at: float | None = None

    def recording_failed(self, error: str) -> None:
        """The recordings storage failed: new sessions are refused until a probe passes."""
        if self.recording_error is None:
            log.error("recording storage does not take writes; refusing new sessions",
                      error=error)
        self.recording_error, self.probed_at = error, None


async def new_session_refusal(ctx: Context, node: NodeState | None) -> str | None:
    """Why this node must not open a new recorded session now (one line), or None: it is
    draining, or the recordings directory does not take writes (probed here, before anything
    of the session is written, so no session starts that could not be recorded; a probe
    passed in the last :data:`PROBE_FRESH` seconds, with no failure since, stands)."""
    if node is not None and node.draining:
        return DRAINING_REFUSAL
    if node is not None and node.database_error is not None:
        return DATABASE_REFUSAL
    if (node is not None and node.recording_error is None and node.probed_at is not None
            and time.monotonic() - node.probed_at < PROBE_FRESH):
        return None
    problems = await asyncio.to_thread(_session_writable, ctx.config.recordings_dir)
    if problems:
        error = problems[0].split("(", 1)[-1].rstrip(")")
        if node is not None:
            node.recording_failed(error)
        return recording_refusal(error)
    if node is not None:
        node.probed_at = time.monotonic()
        if node.recording_error is not None:
            log.info("recording storage takes writes again", was=node.recording_error)
            node.recording_error = None
    return None


def recording_refusal(error: str) -> str:
    return (f"this broker node cannot record sessions right now ({error}); no session"
            " opens unrecorded, so try again later or tell the hospital's IT")


@dataclass(frozen=True)
class Readiness:
    problems: tuple[str, ...]

    @property
    def ready(self) -> bool:
        return not self.problems


async def readiness(ctx: Context, *, draining: bool = False) -> Readiness:
    problems: list[str] = []
    if draining:
        problems.append("draining: this node is shutting down and takes no new sessions")
    try:
        current = await within(DATABASE_TIMEOUT, ctx.store.current_revision())
    except StoreError as exc:
        log.warning("readiness: database not reachable", error=str(exc))
        problems.append("database: not reachable")
    except TimeoutError:
        problems.append(f"database: no answer within {DATABASE_TIMEOUT:g} s")
    else:
        if current != head_revision():
            problems.append(f"database: schema at {current or 'nothing'}, this broker needs"
                            f" {head_revision()} (run 'broker migrate')")
    problems += await asyncio.to_thread(_file_problems, ctx)
    return Readiness(tuple(problems))


def _file_problems(ctx: Context) -> list[str]:
    problems = []
    paths = KeyPaths.of(ctx.config)
    keys = {"the SSH host key": paths.host_key, "the user CA": paths.user_ca,
            "the recording signing key": paths.recording_key, "the vault key": paths.vault_key,
            "the web secret key": paths.web_key}
    for name, path in keys.items():
        try:
            with path.open("rb") as key:
                if not key.read(1):
                    problems.append(f"keys: {name} is empty")
        except OSError as exc:
            problems.append(f"keys: {name} is not readable ({exc.strerror or exc})")
    problems += _session_writable(ctx.config.recordings_dir)  # created as a session would
    return problems


def _session_writable(directory: Path) -> list[str]:
    try:
        if not directory.exists():
            directory.mkdir(mode=0o750, parents=True, exist_ok=True)  # as a recording would
    except OSError as exc:
        return [f"recordings: the directory cannot be created ({exc.strerror or exc})"]
    return writable(directory)


def writable(directory: Path) -> list[str]:
    probe = directory / f".readyz-{secrets.token_hex(6)}"
    try:
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, b"ok")
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        return [f"recordings: the directory does not take writes ({exc.strerror or exc})"]
    return []

