"""Serving an application on one listener: ``[http] listen`` (the portal) or ``[webproxy]
listen`` (the device origin), over TLS unless the certificate is unset.

Slow clients cannot hold a connection: the TLS handshake must finish within
``[http] handshake_timeout`` and every request head (the first, and the next on a kept-alive
connection) within ``[http] head_timeout``; past that the broker closes the connection.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from broker.config import Config
from broker.credentials.keys import KeyPaths
from broker.domain.durations import parse_duration
from broker.errors import ConfigError
from broker.listeners import split_listen


@dataclass(frozen=True)
class Listener:
    """One listener's settings: which section it comes from, where, and its TLS pair."""

    section: str
    listen: str
    tls_cert: Path | None
    tls_key: Path | None

    @classmethod
    def portal(cls, config: Config) -> Listener:
        keys = KeyPaths.of(config)
        return cls("http", config.settings.http.listen, keys.tls_cert, keys.tls_key)

    @classmethod
    def metrics(cls, config: Config) -> Listener:
        """``[metrics] listen``: with the portal's TLS pair (plain HTTP if it has none)."""
        portal = cls.portal(config)
        return cls("metrics", config.settings.metrics.listen, portal.tls_cert, portal.tls_key)

    @classmethod
    def devices(cls, config: Config) -> Listener:
        """``[webproxy]``: its own certificate, or the portal's pair when unset."""
        section = config.settings.webproxy
        if section.tls_cert:
            return cls("webproxy", section.listen, config.path(section.tls_cert),
                       config.path(section.tls_key))
        portal = cls.portal(config)
        return cls("webproxy", section.listen, portal.tls_cert, portal.tls_key)


def tls_context(config: Config, listener: Listener | None = None) -> ssl.SSLContext | None:
    listener = listener or Listener.portal(config)
    if listener.tls_cert is None or listener.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(listener.tls_cert, listener.tls_key)
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename}: the TLS certificate or key is missing "
                          "(run 'broker init')") from None
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"[{listener.section}] tls_cert/tls_key: cannot load them: {exc}"
                          ) from None
    return context


class _TimedSite(web.TCPSite):
    """A TCPSite whose TLS handshakes time out (aiohttp does not pass the argument on)."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int, *,
                 ssl_context: ssl.SSLContext | None, handshake_timeout: float,
                 reuse_port: bool = False) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_address=True,
                         reuse_port=reuse_port)
        self._handshake_timeout = handshake_timeout
        self._share_port = reuse_port

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        listening = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=True, reuse_port=self._share_port or None,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context else None)
        self._server = listening
        self._bound_port = listening.sockets[0].getsockname()[1]


class WebSite:
    """One running HTTP(S) listener (the portal's by default)."""

    def __init__(self, app: web.Application, config: Config,
                 listener: Listener | None = None, *, reuse_port: bool = False) -> None:
        """``reuse_port``: share the port with the other workers of this node
        (SO_REUSEPORT)."""
        self.app = app
        self.reuse_port = reuse_port
        self.sockets: list[socket.socket] = []
        self.config = config
        self.listener = listener or Listener.portal(config)
        head = parse_duration(config.settings.http.head_timeout).total_seconds()
        # aiohttp's keep-alive timer starts when a connection opens and closes it while no
        # complete request head has arrived: exactly the head timeout wanted here.
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                    keepalive_timeout=head, shutdown_timeout=2)
        self.port = 0
        self.tls = False

    @property
    def name(self) -> str:
        return self.listener.section

    async def start(self) -> None:
        listen = self.listener.listen
        host, port = split_listen(listen)
        context = tls_context(self.config, self.listener)
        handshake = parse_duration(self.config.settings.http.handshake_timeout).total_seconds()
        await self.runner.setup()
        site = _TimedSite(self.runner, host or None, port, ssl_context=context,
                          handshake_timeout=handshake, reuse_port=self.reuse_port)
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise ConfigError(f"[{self.listener.section}] listen = {listen!r}: cannot listen: "
                              f"{exc.strerror or exc}") from None
        self.port = self.runner.addresses[0][1]
        server = site._server
        self.sockets = list(server.sockets) if isinstance(server, asyncio.Server) else []
        self.tls = context is not None

    def stop_accepting(self) -> None:
        """Nothing: a web listener answers through a drain (``/readyz`` says 503 so that the
        load balancer sends new work elsewhere); no new session opens on a draining node."""

    async def close(self) -> None:
        await self.runner.cleanup()
