"""The client side of bench/faults.py: interactive sessions that type time-stamped lines and
note when they are cut, one-off session attempts that keep what the broker said, and what
is on disk in a recordings directory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import asyncssh

from bench._kit import Sources, connect
from bench._typists import Session, Spec
from broker.aio import within
from tests.integration.harness import BrokerProcess

sources = Sources(20_000)  # loopback source addresses of the fault scenarios' clients


@dataclass
class Typist:
    """An interactive PTY session through the broker typing a line every ``every`` s; the
    lines echoed (token, wall time) and when the session ended."""

    session: Session
    echoed: list[tuple[str, float]] = field(default_factory=list)
    ended_at: float | None = None
    error: str | None = None

    async def run(self, every: float, until: asyncio.Event) -> None:
        n = 0
        while not until.is_set():
            n += 1
            token = f"tok{self.session.number}n{n}t{time.time():.3f}x"
            try:
                await self.session.echo(token)
            except (OSError, asyncssh.Error, TimeoutError, ConnectionError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"[:200]
                self.ended_at = self.ended_at or time.time()
                return
            self.echoed.append((token, time.time()))
            with contextlib.suppress(TimeoutError):
                await within(every, until.wait())

    async def watch(self) -> None:
        """When the channel closes (the broker cut it), to the millisecond."""
        assert self.session.proc is not None
        with contextlib.suppress(Exception):
            await self.session.proc.wait_closed()
        self.ended_at = self.ended_at or time.time()


async def open_typists(port: int, key: Path, count: int, first: int = 0) -> list[Typist]:
    spec = Spec(port=port, user="tech+dev", key=str(key), sessions=count, seconds=0)
    typists = []
    for i in range(count):
        session = Session(first + i)
        await session.open(spec, sources())
        typists.append(Typist(session))
    return typists


class Banner(asyncssh.SSHClient):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def auth_banner_received(self, msg: str, lang: str) -> None:
        self.lines.append(msg.strip())


async def try_session(port: int, key: Path, timeout: float = 15) -> tuple[bool, str]:
    """A new session (connect, `true`, exit status): whether it worked, and what was said."""
    client = Banner()
    try:
        conn = await within(timeout, connect(port, "tech+dev", key, sources(),
                                              client_factory=lambda: client))
        async with conn:
            done = await within(timeout, conn.run("true"))
        if done.exit_status == 0:
            return True, ""
        return False, (str(done.stderr).strip() or f"exit status {done.exit_status}")[:200]
    except (OSError, asyncssh.Error, TimeoutError) as exc:
        said = " | ".join(client.lines)
        return False, (said or f"{type(exc).__name__}: {exc}")[:200]


def ssh_options(broker: BrokerProcess, key: Path) -> list[str]:
    return ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o",
            "BatchMode=yes"]


def recording_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []


def recorded_text(broker: BrokerProcess) -> dict[Path, bytes]:
    """Every recording directory's files, concatenated, read straight from disk."""
    return {d: b"".join(f.read_bytes() for f in sorted(d.iterdir()) if f.is_file())
            for d in broker.recordings()}


def wait_sealed(broker: BrokerProcess, timeout: float) -> tuple[bool, float]:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if all((d / "manifest.sig").exists() for d in broker.recordings()):
            return True, time.monotonic() - start
        time.sleep(0.05)
    return False, time.monotonic() - start


def end_reasons(broker: BrokerProcess, root: Path | None = None) -> dict[str, int]:
    reasons: dict[str, int] = {}
    for directory in recording_dirs(root or broker.root / "recordings"):
        meta = directory / "session.json"
        if meta.exists():
            reason = str(json.loads(meta.read_text()).get("end_reason"))
            reasons[reason] = reasons.get(reason, 0) + 1
    return reasons


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def failure_to_cut(log: str) -> list[float]:
    """From the broker's own log: for each recording that failed, seconds from its failure
    to the end of its session."""
    failed: dict[str, float] = {}
    ended: dict[str, float] = {}
    for line in log.splitlines():
        with contextlib.suppress(ValueError, KeyError, AttributeError):
            event = json.loads(line)
            if event.get("kind") == "recording.failed":
                failed.setdefault(event["recording"].split("-", 1)[1], stamp(event["timestamp"]))
            elif event.get("kind") == "session.ended":
                ended[event["subject"].split(":", 1)[1]] = stamp(event["timestamp"])
    return sorted(round(ended[i] - t, 3) for i, t in failed.items() if i in ended)
