"""``broker serve``: the SSH service, the scheduler and the change feed, until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

import asyncssh
import structlog

from broker.approvals.notify import Notifier
from broker.audit.checkpoints import Checkpointer
from broker.audit.logging import configure_logging, log_to_file
from broker.config import Config
from broker.credentials.keys import KeyPaths, load_ssh_key
from broker.domain.policy import default_policy_notice
from broker.errors import ConfigError
from broker.http import WebSite, create_app, create_device_app
from broker.http.metrics import create_metrics_app
from broker.http.site import Listener
from broker.recording import default_flusher, seal_interrupted, signer_for
from broker.recording.manifest import Signer, sign_unsigned_head
from broker.revocation.feed import ChangeFeed, feed_for
from broker.revocation.registry import LiveSessions
from broker.revocation.rotator import Rotator
from broker.revocation.scheduler import Scheduler
from broker.services.context import Context
from broker.services.sessions import mark_interrupted
from broker.siem.forwarder import Forwarder
from broker.ssh import asyncssh_fixes
from broker.ssh.channel import handle_process
from broker.ssh.connection import BrokerConnection, ConnectionServices
from broker.ssh.proxy_protocol import ProxiedAcceptor, listen_with_proxy_protocol
from broker.ssh.upstream import RELAY_PACKET, RELAY_WINDOW

log = structlog.get_logger("broker.server")
RECHECK_KINDS = ("grant.", "technician.", "device.", "request.approved", "session.kill")


def split_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class Server:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sessions = LiveSessions()
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
            refusal_burst=settings.ssh.refusal_burst)
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
        self.web = WebSite(create_app(self.ctx, self.sessions), self.ctx.config)
        await self.web.start()
        self.devices_web = WebSite(create_device_app(self.ctx, self.sessions), self.ctx.config,
                                   Listener.devices(self.ctx.config))
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
                 asyncio.ensure_future(Notifier(self.ctx).run())]
        if self.siem is not None:
            tasks.append(asyncio.ensure_future(self.siem.run()))
        if self.checkpointer is not None:
            tasks.append(asyncio.ensure_future(self.checkpointer.run()))
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close()

    async def close(self) -> None:
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
        """Any grant, technician, device or kill change made elsewhere (a CLI process,
        another node) makes live sessions re-check their grant within a second."""
        self.feed = feed_for(self.ctx)

        async def on_change(kinds: list[str]) -> None:
            if self.siem is not None:
                self.siem.wake()
            if any(kind.startswith(RECHECK_KINDS) for kind in kinds):
                await self.resync()

        await self.feed.run(on_change, self.resync)

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
