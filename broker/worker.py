"""One worker of a node's ``broker serve`` cluster (``[broker] workers`` > 1).

The supervisor (:mod:`broker.supervisor`) re-runs ``broker serve --worker INDEX``. A worker
is a complete broker (:class:`broker.server.Server`) that binds the node's ports with
``SO_REUSEPORT`` and is, to the database, a node of its own named ``NODE/wINDEX``: its live
sessions, its audit checkpoint chain, its leases (rotation, SIEM stream, notifications) are
its own, so a worker that dies is recovered like a node that dies, and work leased to one
worker is never done twice by another. Everything that reaches other workers already goes
through the database (the change feed), as between nodes.

Signals, as the supervisor sends them: SIGTERM drains (any number of times: a service
manager that signals the whole group as well as the supervisor does not cut sessions);
SIGINT cuts what is still open at once. A worker whose supervisor is gone drains.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass

import structlog

from broker.audit.logging import configure_logging, log_to_file, tag_process
from broker.config import Config
from broker.domain.policy import default_policy_notice
from broker.server import Server, settle_heap
from broker.services.context import Context

log = structlog.get_logger("broker.worker")
PARENT_CHECK = 1.0  # seconds between checks that the supervisor is alive


@dataclass(frozen=True)
class WorkerRole:
    index: int  # 0 .. count-1
    count: int  # the node's workers, sharing its ports
    ready_fd: int | None  # where to tell the supervisor that this worker serves
    first: bool  # the node's first worker of this start: no other worker runs yet


def worker_node(node: str, index: int) -> str:
    """The name worker ``index`` of node ``node`` has in the database (sessions, checkpoints,
    leases). ``/`` is not allowed in ``[broker] node``, so it names no configured node."""
    return f"{node}/w{index}"


async def run_worker(config: Config, role: WorkerRole) -> None:
    if sys.stderr.isatty():  # the supervisor said where the JSON lines go
        log_to_file(config.log_file, config.settings.log.level)
    else:
        configure_logging()
    tag_process(worker=role.index, pid=os.getpid())
    stop, cut = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    def cut_now() -> None:
        cut.set()
        stop.set()

    loop.add_signal_handler(signal.SIGINT, cut_now)
    ctx = Context.open(config)
    ctx.node = worker_node(config.node, role.index)
    ctx.audit_tags = {"worker": role.index, "worker_pid": os.getpid()}
    server = Server(ctx, shared_by=role.count,
                    recover_workers_of=config.node if role.first else None)
    await server.start()
    settle_heap()
    assert server.web is not None and server.devices_web is not None
    if role.ready_fd is not None:
        report = {"pid": os.getpid(), "ssh": server.ssh_port, "http": server.web.port,
                  "devices": server.devices_web.port, "tls": server.web.tls}
        try:
            os.write(role.ready_fd, json.dumps(report).encode() + b"\n")
            os.close(role.ready_fd)
        except OSError:
            pass  # the supervisor is gone: the watch below drains this worker
    if role.first and not ctx.policies():
        notice = default_policy_notice(str(config.policy_dir))
        log.warning("default policy in force", detail=notice)
        print(f"broker: warning: {notice}", file=sys.stderr, flush=True)
    watch = asyncio.ensure_future(watch_supervisor(os.getppid(), stop))
    try:
        await server.run(stop, cut)
    finally:
        watch.cancel()


async def watch_supervisor(supervisor: int, stop: asyncio.Event) -> None:
    """Drain (like SIGTERM) once the supervisor is gone (killed with SIGKILL, say)."""
    while True:
        await asyncio.sleep(PARENT_CHECK)
        if os.getppid() != supervisor:
            break
    log.error("the supervisor is gone; draining", supervisor=supervisor)
    stop.set()
