"""``broker serve``: the SSH service, the scheduler and the change feed, until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncssh
import structlog

from broker.approvals.notify import Notifier
from broker.audit.checkpoints import Checkpointer
from broker.audit.logging import configure_logging, log_to_file
from broker.config import Config
from broker.credentials.keys import KeyPaths, load_ssh_key
from broker.domain.durations import parse_duration
from broker.domain.policy import default_policy_notice
from broker.errors import BrokerError, ConfigError
from broker.http import WebSite, create_app, create_device_app
from broker.http.metrics import create_metrics_app
from broker.http.site import Listener
from broker.recording import default_flusher, seal_interrupted, signer_for
from broker.recording.manifest import Signer, seal_directory, sign_unsigned_head
from broker.recording.session import METADATA_FILE
from broker.revocation.feed import ChangeFeed, feed_for
from broker.revocation.registry import LiveSessions
from broker.revocation.rotator import Rotator
from broker.revocation.scheduler import Scheduler
from broker.services.context import Context
from broker.services.readiness import NodeState
from broker.services.readiness import writable as writable_problems
from broker.services.sessions import audit_event, mark_interrupted
from broker.siem.forwarder import Forwarder
from broker.ssh import asyncssh_fixes
from broker.ssh.channel import handle_process
from broker.ssh.connection import BrokerConnection, ConnectionServices
from broker.ssh.proxy_protocol import ProxiedAcceptor, listen_with_proxy_protocol
from broker.ssh.upstream import RELAY_PACKET, RELAY_WINDOW
from broker.webproxy.live import DRAINED

log = structlog.get_logger("broker.server")
DATABASE_WATCH = 1.0  # seconds between checks that the database answers
TASK_STOP_TIMEOUT = 3.0  # seconds the background tasks get to stop at shutdown
RECHECK_KINDS = ("grant.", "technician.", "vendor.", "device.", "request.approved",
                 "session.kill")


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Server:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sessions = LiveSessions(
            parse_duration(ctx.config.settings.broker.fail_closed_after).total_seconds(),
            ctx.now)
        self.scheduler = Scheduler(ctx, self.sessions)
        self.rotator = Rotator(ctx)
        self.listener: asyncssh.SSHAcceptor | ProxiedAcceptor | None = None
        self.ssh_port = 0
        self.web: WebSite | None = None
        self.devices_web: WebSite | None = None  # the device web UIs' own origin
        self.metrics_web: WebSite | None = None  # [metrics] listen, when set
        self.feed: ChangeFeed | None = None
        self.siem: Forwarder | None = None
        self.services: ConnectionServices | None = None
        self.checkpointer: Checkpointer | None = None
        self.node = NodeState()  # draining, recordings failing: /readyz and new sessions see it
        self._failed_recordings: set[Path] = set()
        self._unsealed: set[Path] = set()  # recordings whose close failed to seal
        self._resealing: asyncio.Future[None] | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._unlisten: Callable[[], None] | None = None

    async def start(self) -> None:
        asyncssh_fixes.install()
        settings = self.ctx.config.settings
        await self.ctx.store.check_migrated()
        keys = KeyPaths.of(self.ctx.config)
        host_key = load_ssh_key(keys.host_key, "the SSH host key")
        self.ctx.vault  # noqa: B018  (fail now, not at the first login, if the key is missing)
        signer = signer_for(self.ctx.config)  # likewise the recording signing key
        self.siem = Forwarder.from_config(self.ctx)  # likewise [siem]'s TLS files
        host, port = split_listen(settings.ssh.listen)
        public = urlsplit(settings.broker.public_url).hostname or socket.getfqdn()
        ca_public = keys.user_ca.with_name(keys.user_ca.name + ".pub")
        services = ConnectionServices(
            self.ctx, self.sessions, public, port, handle_process,
            user_ca_public=ca_public.read_text().strip() if ca_public.exists() else None,
            max_auth_tries=settings.ssh.max_auth_tries, on_session_change=self.scheduler.replan,
            refusal_burst=settings.ssh.refusal_burst, node=self.node)
        self.services = services
        listen: Any = asyncssh.listen
        extra: dict[str, Any] = {}
        if settings.ssh.proxy_protocol:
            listen = listen_with_proxy_protocol
            extra["trusted"] = list(settings.ssh.proxy_trusted) or None
        try:
            self.listener = await listen(
                host or None, port, server_factory=lambda: BrokerConnection(services),
                server_host_keys=[host_key], encoding=None,
                line_editor=False, agent_forwarding=False, allow_scp=False,
                x11_forwarding=False, compression_algs=None,
                encryption_algs=list(settings.ssh.ciphers), window=RELAY_WINDOW,
                max_pktsize=RELAY_PACKET,
                login_timeout=settings.ssh.login_grace,
                reuse_address=True, server_version="VendorAccessBroker", **extra)
        except OSError as exc:
            raise ConfigError(f"[ssh] listen = {settings.ssh.listen!r}: cannot listen: "
                              f"{exc.strerror or exc}") from None
        self.ssh_port = self.listener.sockets[0].getsockname()[1]
        self.checkpointer = Checkpointer(self.ctx, signer)
        await self.checkpointer.start()
        await sign_recordings_head(self.ctx, signer)
        for row in await mark_interrupted(self.ctx):
            log.warning("session interrupted by the last stop", session=row.id)
            await seal_interrupted(self.ctx.config, row.recording)
        services.public_port = port or self.ssh_port
        self._unlisten = default_flusher().on_failure(self.recording_failed)
        self.web = WebSite(create_app(self.ctx, self.sessions, self.node), self.ctx.config)
        await self.web.start()
        self.devices_web = WebSite(create_device_app(self.ctx, self.sessions, self.node),
                                   self.ctx.config, Listener.devices(self.ctx.config))
        await self.devices_web.start()
        if settings.metrics.listen:
            self.metrics_web = WebSite(create_metrics_app(self.ctx, self.sessions),
                                       self.ctx.config, Listener.metrics(self.ctx.config))
            await self.metrics_web.start()
        await self.scheduler.tick()
        log.info("serving", ssh=f"{host}:{self.ssh_port}", http=self.web.port,
                 devices=self.devices_web.port, tls=self.web.tls,
                 database=self.ctx.store.display_url, node=self.ctx.node)

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [asyncio.ensure_future(self.scheduler.run()),
                 asyncio.ensure_future(self.rotator.run()),
                 asyncio.ensure_future(self.watch_changes()),
                 asyncio.ensure_future(Notifier(self.ctx).run()),
                 asyncio.ensure_future(self.watch_database())]
        if self.siem is not None:
            tasks.append(asyncio.ensure_future(self.siem.run()))
        if self.checkpointer is not None:
            tasks.append(asyncio.ensure_future(self.checkpointer.run()))
        try:
            await stop.wait()
            stop.clear()  # set again by a second signal: cut at once
            await self.drain(stop)
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
                await asyncio.wait_for(stop.wait(), min(left, 0.2))
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

    def stop_accepting(self) -> None:
        """No new SSH connections (those already made go on)."""
        listener = self.listener
        if isinstance(listener, ProxiedAcceptor):
            listener.stop_accepting()
        elif listener is not None:
            listener.close()  # asyncssh's: stops listening, connections stay open

    def recording_failed(self, path: Path, error: OSError) -> None:
        """The flusher could not write a recording file: cut its session (once)."""
        task = asyncio.ensure_future(self._recording_failed(path, error))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _recording_failed(self, path: Path, error: OSError) -> None:
        text = error.strerror or str(error)
        self.node.recording_error = text
        directory = path.parent
        if path.name == METADATA_FILE:  # its close could not finish: seal it when possible
            self._unsealed.add(directory)
            if self._resealing is None or self._resealing.done():
                self._resealing = asyncio.ensure_future(self._seal_when_writable())
        if directory in self._failed_recordings:
            return
        self._failed_recordings.add(directory)
        session = next((s for s in self.sessions
                        if getattr(getattr(s, "recording", None), "path", None) == directory),
                       None)
        log.error("recording failed; cutting its session", recording=directory.name,
                  error=text, technician=session.technician if session else None)
        cut = (session.terminate(f"this session's recording cannot be written ({text}),"
                                 " and no session goes on unrecorded")
               if session is not None else asyncio.sleep(0))
        await asyncio.gather(cut, self._audit(
            "recording.failed", recording=directory.name, error=text,
            errno=error.errno, session_cut=session is not None,
            technician=session.technician if session else None,
            device=session.device if session else None), return_exceptions=True)

    async def _seal_when_writable(self) -> None:
        """Seal the recordings whose close failed, once the directory takes writes again
        (checked each second), so that they verify like every other."""
        signer = signer_for(self.ctx.config)
        while self._unsealed:
            await asyncio.sleep(1)
            if await asyncio.to_thread(writable_problems, self.ctx.config.recordings_dir):
                continue
            for directory in sorted(self._unsealed):
                try:
                    await asyncio.to_thread(seal_directory, directory, signer,
                                            sealed_by="recovery")
                except (OSError, ValueError) as exc:
                    log.error("recording: still cannot seal", recording=directory.name,
                              error=str(exc))
                    break
                self._unsealed.discard(directory)
                log.warning("recording sealed after the disk recovered",
                            recording=directory.name)
            else:
                self.node.recording_error = None

    async def _audit(self, kind: str, **data: object) -> None:
        try:
            await audit_event(self.ctx, kind, "broker", f"node:{self.ctx.node}", **data)
        except Exception as exc:  # the database may be what fails: the log line stays
            log.error("audit event not written", kind=kind, error=str(exc), **data)

    async def close(self) -> None:
        if self._unlisten is not None:
            self._unlisten()
        if self._resealing is not None:
            self._resealing.cancel()
        await asyncio.gather(*(session.terminate("the broker is shutting down")
                               for session in self.sessions), return_exceptions=True)
        if self.listener is not None:
            self.listener.close()
            await self.listener.wait_closed()
        if self.web is not None:
            await self.web.close()
        if self.devices_web is not None:
            await self.devices_web.close()
        if self.metrics_web is not None:
            await self.metrics_web.close()
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
        """Each second, whether the database answers. While it does not, live sessions are
        re-checked each second (a session within its grant goes on until its revocation has
        gone unchecked for ``[broker] fail_closed_after``, then it is cut); once it answers
        again, everything re-syncs."""
        lost: str | None = None
        while True:
            await asyncio.sleep(DATABASE_WATCH)
            try:
                await asyncio.wait_for(self.ctx.store.current_revision(), DATABASE_WATCH * 2)
            except (BrokerError, OSError, TimeoutError) as exc:
                error = str(exc) or "no answer"
                if lost is None:
                    log.error("database unreachable; new sessions are refused, live ones are"
                              " cut if it stays away", error=error,
                              fail_closed_after=self.sessions.fail_closed_after)
                lost = error
                self.node.database_error = error
                await self.sessions.recheck()
                continue
            self.sessions.confirm_all()
            if lost is not None:
                log.warning("database reachable again; re-syncing", was=lost)
                lost = self.node.database_error = None
                await self.resync()

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
        async with ctx.store.session() as db:
            await ctx.audit(db, "recording.head_signed", "broker", f"session:{head['session']}",
                            manifest_sha256=head.get("manifest_sha256"),
                            note="the recordings chain head was unsigned until now")


async def run_server(config: Config) -> None:
    if sys.stderr.isatty():
        # A person is watching: JSON lines go to the log file, the terminal gets plain lines.
        log_to_file(config.log_file, config.settings.log.level)
        print(f"broker: logging JSON to {config.log_file}", file=sys.stderr, flush=True)
    else:
        configure_logging()  # a service manager collects stderr: JSON lines there
    server = Server(Context.open(config))
    await server.start()
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


def run_event_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the server on asyncio's own loop. (uvloop once showed the memory bug that
    broker.ssh.asyncssh_fixes mends; with the fixes in, it moved scp no faster than
    asyncio's loop here, so it is not worth a dependency.)"""
    asyncio.run(main)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (POSIX only, like the rest of the broker)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
