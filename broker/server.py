"""``broker serve``: the SSH service, the scheduler and the change feed, until SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

import structlog

from broker import metrics
from broker.aio import within
from broker.approvals.notify import Notifier
from broker.audit.checkpoints import Checkpointer
from broker.audit.logging import configure_logging, log_to_file
from broker.config import Config
from broker.credentials.keys import KeyPaths, load_ssh_key
from broker.domain.durations import parse_duration
from broker.domain.firmware import PROBE_TIMEOUT
from broker.domain.policy import default_policy_notice
from broker.errors import BrokerError
from broker.http import WebSite, create_app, create_device_app
from broker.http.metrics import create_metrics_app
from broker.http.site import Listener
from broker.listeners import ProtocolListener, split_listen
from broker.recording import default_flusher, seal_interrupted, signer_for
from broker.recording.head_catchup import catch_up_head
from broker.recording.manifest import Signer, sign_unsigned_head
from broker.reuseport import keep_clients_together
from broker.revocation.feed import ChangeFeed, feed_for
from broker.revocation.registry import LiveSessions
from broker.revocation.rotator import Rotator
from broker.revocation.scheduler import Scheduler
from broker.services import firmware_probe as firmware_probes
from broker.services.context import Context
from broker.services.groups import check_directory_settings
from broker.services.readiness import NodeState
from broker.services.sessions import audit_event, mark_interrupted
from broker.siem.forwarder import Forwarder
from broker.ssh import asyncssh_fixes, hooks
from broker.ssh.channel import handle_process
from broker.ssh.connection import ConnectionServices
from broker.ssh.listener import SSHListener
from broker.ssh.upstream_pool import UpstreamPool
from broker.storage_guard import StorageGuard
from broker.webproxy.live import DRAINED

log = structlog.get_logger("broker.server")
DATABASE_WATCH = 1.0  # seconds between checks that the database answers
METRICS_PUBLISH = 1.0  # seconds between updates of this process's gauges
TASK_STOP_TIMEOUT = 3.0  # seconds the background tasks get to stop at shutdown
# seconds the firmware probes after the last sessions get (a login and a probe, each bounded)
PROBE_SETTLE_TIMEOUT = 2 * PROBE_TIMEOUT + 5
BACKGROUND_SETTLE_TIMEOUT = 10.0  # closed connections: sessions sealed, rows written
RECHECK_KINDS = ("grant.", "technician.", "vendor.", "device.", "request.approved",
                 "session.kill")


class Server:
    def __init__(self, ctx: Context, *, shared_by: int = 1,
                 recover_workers_of: str | None = None) -> None:
        """``shared_by``: this many workers of the node share its ports (SO_REUSEPORT);
        ``recover_workers_of``: the node's name, when no other process of it runs yet: also
        close what its workers (or its single process) left live when they last stopped."""
        self.ctx = ctx
        self.shared_by, self.recover_workers_of = shared_by, recover_workers_of
        self.sessions = LiveSessions(
            parse_duration(ctx.config.settings.broker.fail_closed_after).total_seconds(),
            ctx.now)
        self.scheduler = Scheduler(ctx, self.sessions)
        self.rotator = Rotator(ctx)
        self.listeners: list[ProtocolListener] = []  # started, in order
        self.ssh: SSHListener | None = None
        self.web: WebSite | None = None
        self.devices_web: WebSite | None = None  # the device web UIs' own origin
        self.metrics_web: WebSite | None = None  # [metrics] listen, when set
        self.feed: ChangeFeed | None = None
        self.siem: Forwarder | None = None
        self.services: ConnectionServices | None = None
        self.checkpointer: Checkpointer | None = None
        self.node = NodeState()  # draining, recordings failing: /readyz and new sessions see it
        self.storage = StorageGuard(ctx, self.sessions, self.node, self._audit)

    async def start(self) -> None:
        asyncssh_fixes.install()
        settings = self.ctx.config.settings
        await self.ctx.store.check_migrated()
        keys = KeyPaths.of(self.ctx.config)
        host_key = load_ssh_key(keys.host_key, "the SSH host key")
        self.ctx.vault  # noqa: B018  (fail now, not at the first login, if the key is missing)
        signer = signer_for(self.ctx.config)  # likewise the recording signing key
        self.siem = Forwarder.from_config(self.ctx)  # likewise [siem]'s TLS files
        check_directory_settings(self.ctx)  # likewise [ldap]'s password variable and CA file
        public = urlsplit(settings.broker.public_url).hostname or socket.getfqdn()
        ca_public = keys.user_ca.with_name(keys.user_ca.name + ".pub")
        services = ConnectionServices(
            self.ctx, self.sessions, public, split_listen(settings.ssh.listen)[1],
            handle_process,
            user_ca_public=ca_public.read_text().strip() if ca_public.exists() else None,
            max_auth_tries=settings.ssh.max_auth_tries,
            on_session_open=self.scheduler.session_opened,
            refusal_burst=settings.ssh.refusal_burst, node=self.node,
            upstream_pool=UpstreamPool(keepalive=settings.ssh.device_keepalive))
        self.services = services
        self.ssh = SSHListener(self.ctx.config, services, host_key,
                               reuse_port=self.shared_by > 1)
        await self._listen(self.ssh)
        self.checkpointer = Checkpointer(self.ctx, signer)
        await self.checkpointer.start()
        await sign_recordings_head(self.ctx, signer)
        for row in await mark_interrupted(self.ctx, workers_of=self.recover_workers_of):
            log.warning("session interrupted by the last stop", session=row.id)
            await seal_interrupted(self.ctx.config, row.recording)
        self.storage.start()
        shared = self.shared_by > 1
        self.web = WebSite(create_app(self.ctx, self.sessions, self.node), self.ctx.config,
                           reuse_port=shared)
        await self._listen(self.web)
        self.devices_web = WebSite(create_device_app(self.ctx, self.sessions, self.node),
                                   self.ctx.config, Listener.devices(self.ctx.config),
                                   reuse_port=shared)
        await self._listen(self.devices_web)
        if shared:  # a browser's device session lives in one worker: keep it there
            keep_clients_together(self.devices_web.sockets, self.shared_by)
        if settings.metrics.listen:
            self.metrics_web = WebSite(create_metrics_app(self.ctx, self.sessions),
                                       self.ctx.config, Listener.metrics(self.ctx.config),
                                       reuse_port=shared)
            await self._listen(self.metrics_web)
        await self.scheduler.tick()
        log.info("serving", ssh=settings.ssh.listen, ssh_port=self.ssh_port, http=self.web.port,
                 devices=self.devices_web.port, tls=self.web.tls,
                 database=self.ctx.store.display_url, node=self.ctx.node)

    async def run(self, stop: asyncio.Event, cut: asyncio.Event | None = None) -> None:
        """Serve until ``stop`` is set, then drain until done or ``cut`` is set (default:
        ``stop`` again)."""
        tasks = [asyncio.ensure_future(self.scheduler.run()),
                 asyncio.ensure_future(self.rotator.run()),
                 asyncio.ensure_future(self.watch_changes()),
                 asyncio.ensure_future(Notifier(self.ctx).run()),
                 asyncio.ensure_future(self.watch_database()),
                 asyncio.ensure_future(self.publish_metrics())]
        if self.siem is not None:
            tasks.append(asyncio.ensure_future(self.siem.run()))
        if self.checkpointer is not None:
            tasks.append(asyncio.ensure_future(self.checkpointer.run()))
        try:
            await stop.wait()
            stop.clear()  # set again by a second signal: cut at once
            await self.drain(cut or stop)
        finally:
            for task in tasks:
                task.cancel()
            # A task stuck in a database call must not keep the shutdown checkpoint, the
            # seals and the exit waiting: give them a few seconds, then close regardless.
            _, late = await asyncio.wait(tasks, timeout=TASK_STOP_TIMEOUT)
            for task in late:
                log.warning("a background task did not stop in time",
                            task=task.get_coro().__qualname__)  # type: ignore[union-attr]
            await self.close()

    async def drain(self, stop: asyncio.Event) -> None:
        """Take no new sessions (``/readyz`` answers 503 at once, so a load balancer sends new
        ones elsewhere), tell each live session, let them go on for up to ``[broker]
        drain_timeout`` or until ``stop`` is set again, then cut the rest."""
        timeout = parse_duration(self.ctx.config.settings.broker.drain_timeout).total_seconds()
        self.node.draining = True
        self.stop_accepting()
        live = list(self.sessions)
        log.warning("draining", sessions=len(live), drain_timeout=timeout)
        if live:  # whoever stopped it (a person at a terminal, a service manager) learns how
            print(f"broker: draining {len(live)} live session(s) for up to"
                  f" {format_limit(timeout)}; a second SIGTERM or Ctrl-C cuts them now",
                  file=sys.stderr, flush=True)
        await self._audit("node.draining", sessions=len(live),
                          drain_timeout=self.ctx.config.settings.broker.drain_timeout)
        await asyncio.gather(*(session.warn(drain_notice(timeout)) for session in live),
                             return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interrupted = False
        while len(self.sessions) and (left := deadline - loop.time()) > 0:
            try:
                await within(min(left, 0.2), stop.wait())
            except TimeoutError:
                continue
            interrupted = True
            log.warning("a second signal: cutting the sessions still open now")
            break
        rest = list(self.sessions)
        await asyncio.gather(*(session.terminate(DRAINED) for session in rest),
                             return_exceptions=True)
        log.warning("drained", ended_by_themselves=len(set(live) - set(rest)), cut=len(rest),
                    interrupted=interrupted)
        await self._audit("node.drained", ended=len(set(live) - set(rest)), cut=len(rest),
                          interrupted=interrupted)

    async def _listen(self, listener: ProtocolListener) -> None:
        await listener.start()
        self.listeners.append(listener)

    @property
    def ssh_port(self) -> int:
        return self.ssh.port if self.ssh is not None else 0

    def stop_accepting(self) -> None:
        """No new connections on any listener (those already made go on)."""
        for listener in self.listeners:
            listener.stop_accepting()

    async def _audit(self, kind: str, **data: object) -> None:
        try:
            await audit_event(self.ctx, kind, "broker", f"node:{self.ctx.node}", **data)
        except Exception as exc:  # the database may be what fails: the log line stays
            log.error("audit event not written", kind=kind, error=str(exc), **data)

    async def close(self) -> None:
        self.storage.stop()
        await asyncio.gather(*(session.terminate("the broker is shutting down")
                               for session in self.sessions), return_exceptions=True)
        await firmware_probes.settle(PROBE_SETTLE_TIMEOUT)  # what devices say after a cut
        if self.services is not None:
            self.services.upstream_pool.close()
        for listener in reversed(self.listeners):
            await listener.close()
        await hooks.settle(BACKGROUND_SETTLE_TIMEOUT)  # sessions closed, their rows written
        if self.services is not None:
            await self.services.refusals.flush()  # the counts of refusals not yet summarised
        await default_flusher().stop()
        if self.checkpointer is not None:
            await self.checkpointer.stop()  # the signed clean-shutdown marker
        await self.ctx.close()

    async def watch_changes(self) -> None:
        """Any grant, technician, vendor, device or kill change made elsewhere (a CLI process,
        another node) makes live sessions re-check their grant within a second."""
        self.feed = feed_for(self.ctx)

        async def on_change(kinds: list[str]) -> None:
            if self.siem is not None:
                self.siem.wake()
            if any(kind.startswith(RECHECK_KINDS) for kind in kinds):
                await self.resync()

        await self.feed.run(on_change, self.resync)

    async def watch_database(self) -> None:
        """Each second, whether the database answers (:meth:`Store.ping`, on a connection of
        its own: a pool busy with sessions' checks is not an outage). While it does not, a
        live session within its grant goes on until its revocation has gone unchecked for
        ``[broker] fail_closed_after``, then it is cut; once it answers again, everything
        re-syncs."""
        lost: str | None = None
        while True:
            await asyncio.sleep(DATABASE_WATCH)
            try:
                await within(DATABASE_WATCH * 2, self.ctx.store.ping())
            except (BrokerError, OSError, TimeoutError) as exc:
                error = str(exc) or "no answer"
                if lost is None:
                    log.error("database unreachable; new sessions are refused, live ones are"
                              " cut if it stays away", error=error,
                              fail_closed_after=self.sessions.fail_closed_after)
                lost = error
                self.node.database_error = error
                await self.sessions.expire_unconfirmed(error)
                continue
            self.sessions.confirm_all()
            if lost is not None:
                log.warning("database reachable again; re-syncing", was=lost)
                lost = self.node.database_error = None
                await self.resync()

    async def publish_metrics(self) -> None:
        """Each second, this process's own gauges, for a scrape answered by another worker."""
        while True:
            metrics.publish_local(self.ctx, self.sessions)
            await asyncio.sleep(METRICS_PUBLISH)

    async def resync(self) -> None:
        self.scheduler.replan()
        self.rotator.replan()
        await self.sessions.recheck()


async def sign_recordings_head(ctx: Context, signer: Signer) -> None:
    """Upgrade: a recordings chain head written before heads were signed gets signed now,
    and the audit log says from when on it is signed."""
    head = await asyncio.to_thread(sign_unsigned_head, ctx.config.recordings_dir, signer,
                                   ctx.now())
    if head is not None:
        await ctx.audit_alone("recording.head_signed", "broker", f"session:{head['session']}",
                              manifest_sha256=head.get("manifest_sha256"),
                              note="the recordings chain head was unsigned until now")
    # a kill between a seal and its head (bench/faults.py): the head moves on to that seal
    moved = await asyncio.to_thread(catch_up_head, ctx.config.recordings_dir, signer)
    for session in moved:
        await ctx.audit_alone("recording.head_caught_up", "broker", f"session:{session}",
                              note="sealed before the last stop; the chain head now names it")


async def run_server(config: Config) -> None:
    if sys.stderr.isatty():
        # A person is watching: JSON lines go to the log file, the terminal gets plain lines.
        log_to_file(config.log_file, config.settings.log.level)
        print(f"broker: logging JSON to {config.log_file}", file=sys.stderr, flush=True)
    else:
        configure_logging()  # a service manager collects stderr: JSON lines there
    # no worker of this node runs: what they left live when they last stopped is closed too
    server = Server(Context.open(config), recover_workers_of=config.node)
    await server.start()
    settle_heap()
    assert server.web is not None and server.devices_web is not None
    scheme = "HTTPS" if server.web.tls else "HTTP"
    print(f"broker: serving SSH on port {server.ssh_port}, {scheme} on port {server.web.port},"
          f" device web UIs on port {server.devices_web.port}", flush=True)
    if not server.ctx.policies():
        notice = default_policy_notice(str(config.policy_dir))
        log.warning("default policy in force", detail=notice)
        print(f"broker: warning: {notice}", file=sys.stderr, flush=True)
    await server.run(stop_on_signals())


def format_limit(seconds: float) -> str:
    return (f"{int(seconds // 60)} min" if seconds >= 60 and seconds % 60 == 0
            else f"{int(seconds)} s")


def drain_notice(seconds: float) -> str:
    """The one line every live session gets when its node starts draining."""
    return (f"this broker node is draining for maintenance; your session stays up to"
            f" {format_limit(seconds)}, then closes. Reconnect to continue on another node.")


# Seconds a thread that wants the GIL waits before it makes the holder give it up. The event
# loop holds the GIL almost always; the store's, the seals' and the flusher's threads give it
# up at their every system call anyway. Python's 5 ms made the loop hand the GIL over and
# back mid-work under a burst of logins; at 50 ms a session opens with about 1 ms less CPU
# (bench/opening.py), and typing's echo p99 is unchanged (bench/sessions.py).
GIL_SWITCH_INTERVAL = 0.05


def settle_heap() -> None:
    """For a serving process, once it is up: what it made to start (modules, classes, its
    apps: 150,000 objects) is moved out of the garbage collector's reach for good, so that
    the full collections a burst of logins sets off walk only what sessions made."""
    gc.collect()
    gc.freeze()


def run_event_loop(main: Coroutine[Any, Any, None], loop: str = "uvloop") -> None:
    """Run the server on ``[broker] event_loop``: uvloop (libuv), or asyncio's own loop.
    uvloop once showed the window bug that broker.ssh.asyncssh_fixes mends; with the fixes
    in, it serves logins, small web requests and typing with less CPU per event than asyncio's
    loop (``bench/``)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    metrics.time_gc()
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (POSIX only, like the rest of the broker)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
