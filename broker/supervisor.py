"""``broker serve`` with ``[broker] workers`` > 1: one supervisor process and N workers.

The supervisor serves nothing itself and holds no database connection. It

* checks that every listener's address is free (so no stray broker shares the port) and
  fixes what port ``0`` stands for, so that all workers bind the same ports;
* starts worker 0 alone (it closes what the node's workers left live when they last
  stopped, while no worker of this start can have opened anything), then the others; if
  one cannot start, it stops the rest and exits 1, leaving one line on stderr (the
  worker's own, or one saying how it ended);
* restarts a worker that exits while the node is not stopping, after 1 s, doubling up to
  30 s while restarts keep failing (back to 1 s once a worker has served for a minute);
  each such exit is logged and audited (``node.worker_exited``);
* gives the workers one directory for their metrics (removed when it exits), so that a
  scrape of any worker answers for the node (:mod:`broker.metrics`);
* on SIGTERM or SIGINT sends SIGTERM to every worker (each drains, as a single broker
  does), on a second signal SIGINT (each cuts what is still open), and exits 0 when every
  worker has exited cleanly.

Workers run in a process group of their own, so Ctrl-C at a terminal reaches only the
supervisor, which passes the stop on once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from broker.aio import within
from broker.audit.logging import configure_logging, log_to_file, tag_process
from broker.config import Config
from broker.errors import ConfigError
from broker.metrics import MULTIPROCESS_ENV, worker_gone
from broker.reuseport import claim_port

log = structlog.get_logger("broker.supervisor")
RESTART_FIRST = 1.0  # seconds before restarting a worker that died
RESTART_MAX = 30.0
STABLE_AFTER = 60.0  # a worker that served this long resets the back-off
AUDIT_TIMEOUT = 10.0
MAX_NODE_NAME = 100 - len("/w255")  # the database's node columns hold 100 characters


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None  # the read end of the worker's "I serve" pipe
    report: bytes = b""
    ready_at: float | None = None  # when it said it serves (None: not yet)
    failures: int = 0  # exits in a row that came before the worker served STABLE_AFTER
    restart_at: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exit status {code}"


def check_shareable(config: Config) -> None:
    """What several workers cannot share: an in-memory database, a node name too long for
    the workers' names."""
    count = config.settings.broker.workers
    url = config.database_url
    if url.startswith("sqlite") and (url.endswith(("/", ":memory:")) or "mode=memory" in url):
        raise ConfigError(f"[broker] workers = {count}: an in-memory SQLite database cannot"
                          " be shared by several worker processes; use a database file or"
                          " workers = 1")
    if len(config.node) > MAX_NODE_NAME:
        raise ConfigError(f"[broker] node: at most {MAX_NODE_NAME} characters with workers"
                          f" = {count} (each worker is named NODE/wINDEX), got"
                          f" {len(config.node)}")


class Supervisor:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.count = config.settings.broker.workers
        self.workers = [Worker(i) for i in range(self.count)]
        self.env = dict(os.environ)
        self.signals: list[int] = []
        self.stopping = 0  # signals acted on: 1 drain, 2 cut
        self.serving = False  # every worker of the start said it serves
        self.failed = False  # a worker could not start, or exited unclean while stopping
        self.metrics_dir = ""  # the workers' metric files, made by run()

    # -- the whole life --------------------------------------------------------------------
    def run(self) -> int:
        check_shareable(self.config)
        self._claim_ports()
        self._logging()
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        os.set_blocking(wake_read, False)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda number, _frame: self.signals.append(number))
        signal.signal(signal.SIGCHLD, lambda _number, _frame: None)  # wakes the select
        self.metrics_dir = tempfile.mkdtemp(prefix="broker-metrics-")
        self.env[MULTIPROCESS_ENV] = self.metrics_dir
        try:
            return self._supervise(wake_read)
        finally:
            signal.set_wakeup_fd(-1)
            os.close(wake_read)
            os.close(wake_write)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _supervise(self, wake: int) -> int:
        log.debug("starting workers", workers=self.count, node=self.config.node)
        self._spawn(self.workers[0], first=True)
        self._loop(wake, lambda: self.workers[0].ready_at is not None)
        if not self.stopping and not self.failed:
            for worker in self.workers[1:]:
                self._spawn(worker)
            self._loop(wake, lambda: all(w.ready_at is not None for w in self.workers))
        if not self.stopping and not self.failed:
            self.serving = True
            self._announce()
            self._loop(wake, lambda: False)
        elif not self.stopping:  # a worker could not start: stop the others
            self._stop(signal.SIGTERM)
            self.stopping = 1
        self._loop(wake, lambda: not self._alive())
        if self.serving:
            log.info("stopped", failed=self.failed)
        return 1 if self.failed else 0

    def _loop(self, wake: int, done: Any) -> None:
        """Handle signals, exits, reports and restarts until ``done()`` or, while not
        stopping, a worker fails to start; or, stopping, until no worker is alive."""
        while True:
            self._signals()
            self._reap()
            if self.stopping and not self._alive():
                return
            if done() or (self.failed and not self.stopping):
                return
            self._restarts()
            fds = [wake, *(w.ready_fd for w in self.workers if w.ready_fd is not None)]
            due = [w.restart_at for w in self.workers if w.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else 1.0
            try:
                readable, _, _ = select.select(fds, [], [], min(timeout, 1.0))
            except InterruptedError:
                continue
            if wake in readable:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake, 4096)
            for worker in self.workers:
                if worker.ready_fd is not None and worker.ready_fd in readable:
                    self._read_report(worker)

    # -- workers ---------------------------------------------------------------------------
    def _spawn(self, worker: Worker, *, first: bool = False) -> None:
        read_end, write_end = os.pipe()
        command = [sys.executable, "-m", "broker", "serve", "--config", self._config_file(),
                   "--worker", str(worker.index), "--ready-fd", str(write_end)]
        if first:
            command.append("--first")
        try:
            worker.proc = subprocess.Popen(command, env=self.env, pass_fds=(write_end,),
                                           process_group=0)
        except OSError as exc:
            os.close(read_end)
            raise ConfigError(f"cannot start worker {worker.index}: {exc}") from None
        finally:
            os.close(write_end)
        worker.ready_fd, worker.report, worker.ready_at = read_end, b"", None
        worker.restart_at = None
        log.debug("worker started", worker=worker.index, worker_pid=worker.proc.pid)

    def _read_report(self, worker: Worker) -> None:
        assert worker.ready_fd is not None
        try:
            chunk = os.read(worker.ready_fd, 4096)
        except OSError:
            chunk = b""
        worker.report += chunk
        if b"\n" in worker.report:
            with contextlib.suppress(ValueError):
                worker.info = json.loads(worker.report.split(b"\n", 1)[0])
            worker.ready_at = time.monotonic()
            log.debug("worker serving", worker=worker.index, worker_pid=worker.info.get("pid"))
        if not chunk or b"\n" in worker.report:
            os.close(worker.ready_fd)
            worker.ready_fd = None

    def _reap(self) -> None:
        for worker in self.workers:
            proc = worker.proc
            if proc is None or proc.poll() is None:
                continue
            code = proc.returncode
            worker.proc = None
            worker_gone(proc.pid, self.metrics_dir)
            if worker.ready_fd is not None:
                os.close(worker.ready_fd)
                worker.ready_fd = None
            if self.stopping:
                if code != 0:
                    self.failed = True
                    log.error("worker exited unclean while stopping", worker=worker.index,
                              worker_pid=proc.pid, status=describe_exit(code))
                continue
            if not self.serving:  # could not start
                self.failed = True
                if code != 1:  # 1: its one line saying why is on stderr already
                    print(f"broker: worker {worker.index} could not start"
                          f" ({describe_exit(code)})", file=sys.stderr, flush=True)
                continue
            self._died(worker, proc.pid, code)

    def _died(self, worker: Worker, pid: int, code: int) -> None:
        served = time.monotonic() - worker.ready_at if worker.ready_at is not None else 0.0
        worker.failures = 0 if served >= STABLE_AFTER else worker.failures + 1
        delay = min(RESTART_FIRST * 2 ** max(0, worker.failures - 1), RESTART_MAX)
        worker.restart_at = time.monotonic() + delay
        status = describe_exit(code)
        log.error("worker exited; restarting it", worker=worker.index, worker_pid=pid,
                  status=status, restart_in=delay, failures_in_a_row=worker.failures)
        print(f"broker: worker {worker.index} (pid {pid}) exited ({status}); restarting it"
              f" in {delay:g} s", file=sys.stderr, flush=True)
        self._audit("node.worker_exited", worker=worker.index, worker_pid=pid,
                    status=status, restart_in_seconds=delay,
                    failures_in_a_row=worker.failures)

    def _restarts(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None and worker.restart_at <= now and \
                    not self.stopping:
                self._spawn(worker)

    def _alive(self) -> list[Worker]:
        return [w for w in self.workers if w.proc is not None]

    # -- signals ---------------------------------------------------------------------------
    def _signals(self) -> None:
        while self.signals:
            number = self.signals.pop(0)
            self.stopping += 1
            for worker in self.workers:
                worker.restart_at = None
            name = signal.Signals(number).name
            if self.stopping == 1:
                log.warning("stopping: the workers drain", signal=name,
                            workers=len(self._alive()))
                self._stop(signal.SIGTERM)
            else:
                log.warning("a second signal: the workers cut their sessions now",
                            signal=name)
                self._stop(signal.SIGINT)

    def _stop(self, sig: signal.Signals) -> None:
        for worker in self._alive():
            assert worker.proc is not None
            with contextlib.suppress(ProcessLookupError):
                worker.proc.send_signal(sig)

    # -- set-up ----------------------------------------------------------------------------
    def _claim_ports(self) -> None:
        """Every listener's address is free; port 0 becomes one port all workers bind."""
        settings = self.config.settings
        listeners = [("ssh", settings.ssh.listen), ("http", settings.http.listen),
                     ("webproxy", settings.webproxy.listen)]
        if settings.metrics.listen:
            listeners.append(("metrics", settings.metrics.listen))
        for section, listen in listeners:
            claimed = claim_port(section, listen)
            if claimed != listen:
                self.env[f"BROKER_{section.upper()}_LISTEN"] = claimed

    def _config_file(self) -> str:
        return str(Path(self.config.source).absolute())

    def _logging(self) -> None:
        if sys.stderr.isatty():
            log_to_file(self.config.log_file, self.config.settings.log.level)
            print(f"broker: logging JSON to {self.config.log_file}", file=sys.stderr,
                  flush=True)
        else:
            configure_logging()
        tag_process(worker="supervisor", pid=os.getpid())

    def _announce(self) -> None:
        info = self.workers[0].info
        scheme = "HTTPS" if info.get("tls") else "HTTP"
        pids = ", ".join(str(w.info.get("pid", "?")) for w in self.workers)
        log.info("serving", workers=self.count, worker_pids=pids)
        print(f"broker: serving SSH on port {info.get('ssh')}, {scheme} on port"
              f" {info.get('http')}, device web UIs on port {info.get('devices')}"
              f" ({self.count} worker processes: {pids})", flush=True)

    def _audit(self, kind: str, **data: object) -> None:
        """An audit event from the supervisor, which otherwise holds no database connection:
        opened for the event, closed after it."""
        from broker.services.context import Context
        from broker.services.sessions import audit_event

        async def write() -> None:
            ctx = Context.open(self.config)
            try:
                await within(AUDIT_TIMEOUT, audit_event(ctx, kind, "broker",
                                                        f"node:{self.config.node}", **data))
            finally:
                await ctx.close()

        try:
            asyncio.run(write())
        except Exception as exc:  # the database may be what fails: the log line stays
            log.error("audit event not written", kind=kind, error=str(exc) or type(exc).__name__,
                      **data)
