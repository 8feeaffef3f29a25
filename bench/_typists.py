"""The load generator of bench/sessions.py and bench/soak.py: processes of asyncssh clients,
each holding many interactive PTY sessions running `cat` and typing one line a second into
each, timing each line's echo (the device's terminal echo and cat's copy both back).

The parent starts ``workers`` processes (one event loop each, so one slow loop does not
queue every session), hands each a slice of the sessions, waits until all are open, then
starts them typing at the same instant:

    with Typists(spec, workers=4) as typists:
        opened = typists.open()        # every session open, warmed up (one echo each)
        result = typists.run()         # typing for spec.seconds (or start() ... finish())
        typists.close()                # every session closed

A worker is this file run as a script, reading its JSON spec on stdin and writing JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import asyncssh

from broker.aio import within

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench._kit import Sources, connect, raise_fd_limit

ECHO_TIMEOUT = 10.0  # a line not back within this is an error


@dataclass
class Spec:
    port: int
    user: str
    key: str
    sessions: int
    seconds: float
    open_concurrency: int = 4  # logins in flight per worker
    first_source: int = 0
    command: str = "cat"


class Session:
    def __init__(self, number: int) -> None:
        self.number = number
        self.conn: asyncssh.SSHClientConnection | None = None
        self.proc: asyncssh.SSHClientProcess[bytes] | None = None
        self.buffer = b""

    async def open(self, spec: Spec, source: tuple[str, int]) -> None:
        self.conn = await connect(spec.port, spec.user, Path(spec.key), source)
        self.proc = await self.conn.create_process(
            spec.command, term_type="xterm", term_size=(80, 24), encoding=None)
        await self.echo(f"warm-{self.number}")

    async def echo(self, token: str) -> float:
        """Type ``token`` and a newline; seconds until it is back twice (echo + cat)."""
        assert self.proc is not None
        wanted = token.encode()
        start = time.perf_counter()
        self.proc.stdin.write(wanted + b"\n")
        while self.buffer.count(wanted) < 2:
            chunk = await within(ECHO_TIMEOUT, self.proc.stdout.read(65536))
            if not chunk:
                raise ConnectionError("the session ended")
            self.buffer += chunk
        took = time.perf_counter() - start
        self.buffer = self.buffer[self.buffer.rindex(wanted) + len(wanted):]
        return took

    async def close(self) -> None:
        if self.proc is not None:
            try:  # ^D at the start of a line: cat reads end of file from its terminal
                self.proc.stdin.write(b"\x04")
                self.proc.stdin.write_eof()
            except (OSError, asyncssh.Error):
                pass
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                await within(10, self.proc.wait_closed())
        if self.conn is not None:
            self.conn.close()
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                await within(10, self.conn.wait_closed())


def _kind(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:120]}"


async def worker(spec: Spec) -> None:
    raise_fd_limit()
    sessions = [Session(spec.first_source + i) for i in range(spec.sessions)]
    sources = Sources(spec.first_source)
    limit = asyncio.Semaphore(spec.open_concurrency)
    open_errors: dict[str, int] = {}
    open_times: list[float] = []

    async def open_one(session: Session) -> Session | None:
        async with limit:
            start = time.perf_counter()
            try:
                await session.open(spec, sources())
            except (OSError, asyncssh.Error, TimeoutError, ConnectionError) as exc:
                open_errors[_kind(exc)] = open_errors.get(_kind(exc), 0) + 1
                await session.close()
                return None
            open_times.append(time.perf_counter() - start)
            return session

    start = time.perf_counter()
    live = [s for s in await asyncio.gather(*(open_one(s) for s in sessions)) if s]
    emit({"opened": len(live), "open_errors": open_errors,
          "open_seconds": time.perf_counter() - start, "open_times": open_times})
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    go = float(line.split()[1])  # wall-clock instant every worker starts at
    errors: dict[str, int] = {}
    samples: list[tuple[float, float]] = []  # (seconds since go, echo seconds)
    loop = asyncio.get_running_loop()
    begin = loop.time() + max(0.0, go - time.time())
    end = begin + spec.seconds
    lag: list[float] = []  # how late each tick started: the client's own loop delay

    async def typist(session: Session) -> None:
        tick = begin + random.random()
        seq = 0
        while tick < end:
            await asyncio.sleep(max(0.0, tick - loop.time()))
            lag.append(loop.time() - tick)
            seq += 1
            try:
                took = await session.echo(f"s{session.number}n{seq}x")
            except (OSError, asyncssh.Error, TimeoutError, ConnectionError) as exc:
                errors[_kind(exc)] = errors.get(_kind(exc), 0) + 1
                return
            samples.append((round(loop.time() - begin, 3), took))
            tick += 1.0
            while tick < loop.time():  # a line slower than a second: skip missed ticks
                tick += 1.0

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(typist(s) for s in live))
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    emit({"samples": samples, "errors": errors, "client_cpu_seconds": round(cpu, 2),
          "tick_lag_p99": sorted(lag)[int(0.99 * (len(lag) - 1))] if lag else None})
    await asyncio.gather(*(s.close() for s in live))
    emit({"closed": len(live)})


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Typists:
    """The parent's side: ``workers`` worker processes sharing ``spec.sessions``."""

    def __init__(self, spec: Spec, workers: int) -> None:
        self.spec, self.workers = spec, max(1, min(workers, spec.sessions))
        self.procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> Typists:
        share, extra = divmod(self.spec.sessions, self.workers)
        first = self.spec.first_source
        for w in range(self.workers):
            count = share + (w < extra)
            spec = Spec(**{**asdict(self.spec), "sessions": count, "first_source": first})
            first += count
            proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True)
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(asdict(spec)) + "\n")
            proc.stdin.flush()
            self.procs.append(proc)
        return self

    def _read(self, proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise SystemExit(f"a load-generating worker exited ({proc.wait()})")
        return dict(json.loads(line))

    def open(self) -> dict[str, Any]:
        """Wait until every worker has opened its sessions."""
        reports = [self._read(p) for p in self.procs]
        errors: dict[str, int] = {}
        for report in reports:
            for kind, count in report["open_errors"].items():
                errors[kind] = errors.get(kind, 0) + count
        return {"opened": sum(r["opened"] for r in reports), "open_errors": errors,
                "open_seconds": max(r["open_seconds"] for r in reports),
                "open_times": [t for r in reports for t in r["open_times"]]}

    def run(self, lead: float = 2.0) -> dict[str, Any]:
        """Everyone types for spec.seconds from ``lead`` seconds on; the numbers of it."""
        self.start(lead)
        return self.finish()

    def start(self, lead: float = 2.0, at: float | None = None) -> float:
        """Tell every worker to type from wall-clock ``at`` (default: ``lead`` s from now)."""
        go = at if at is not None else time.time() + lead
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"go {go}\n")
            proc.stdin.flush()
        return go

    def finish(self) -> dict[str, Any]:
        """Wait for the end of the typing started by start()."""
        reports = [self._read(p) for p in self.procs]
        errors: dict[str, int] = {}
        for report in reports:
            for kind, count in report["errors"].items():
                errors[kind] = errors.get(kind, 0) + count
        return {"samples": [tuple(s) for r in reports for s in r["samples"]],
                "errors": errors,
                "client_cpu_seconds": sum(r["client_cpu_seconds"] for r in reports),
                "client_tick_lag_p99_s": max((r["tick_lag_p99"] or 0) for r in reports)}

    def close(self) -> int:
        closed = sum(int(self._read(p)["closed"]) for p in self.procs)
        for proc in self.procs:
            proc.wait(60)
        return closed

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    asyncio.run(worker(Spec(**json.loads(sys.stdin.readline()))))
