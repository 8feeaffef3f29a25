"""The technicians' SSH service as a :class:`broker.listeners.ProtocolListener`: asyncssh's
listener (behind a PROXY protocol header when configured), one
:class:`broker.ssh.connection.BrokerConnection` per connection."""

from __future__ import annotations

from typing import Any

import asyncssh

from broker.config import Config
from broker.errors import ConfigError
from broker.listeners import split_listen
from broker.ssh.connection import BrokerConnection, ConnectionServices
from broker.ssh.proxy_protocol import ProxiedAcceptor, listen_with_proxy_protocol
from broker.ssh.upstream import RELAY_PACKET, RELAY_WINDOW


class SSHListener:
    name = "ssh"

    def __init__(self, config: Config, services: ConnectionServices,
                 host_key: asyncssh.SSHKey, *, reuse_port: bool = False) -> None:
        self.config, self.services, self.host_key = config, services, host_key
        self.reuse_port = reuse_port  # several workers share the port (SO_REUSEPORT)
        self.acceptor: asyncssh.SSHAcceptor | ProxiedAcceptor | None = None
        self.port = 0

    async def start(self) -> None:
        settings = self.config.settings.ssh
        host, port = split_listen(settings.listen)
        listen: Any = asyncssh.listen
        extra: dict[str, Any] = {}
        if settings.proxy_protocol:
            listen = listen_with_proxy_protocol
            extra["trusted"] = list(settings.proxy_trusted) or None
        if self.reuse_port:
            extra["reuse_port"] = True
        services = self.services
        try:
            self.acceptor = await listen(
                host or None, port, server_factory=lambda: BrokerConnection(services),
                server_host_keys=[self.host_key], encoding=None,
                line_editor=False, agent_forwarding=False, allow_scp=False,
                x11_forwarding=False, compression_algs=None,
                encryption_algs=list(settings.ciphers), window=RELAY_WINDOW,
                max_pktsize=RELAY_PACKET, login_timeout=settings.login_grace,
                reuse_address=True, server_version="VendorAccessBroker", **extra)
        except OSError as exc:
            raise ConfigError(f"[ssh] listen = {settings.listen!r}: cannot listen: "
                              f"{exc.strerror or exc}") from None
        self.port = self.acceptor.sockets[0].getsockname()[1]
        services.public_port = port or self.port

    def stop_accepting(self) -> None:
        acceptor = self.acceptor
        if isinstance(acceptor, ProxiedAcceptor):
            acceptor.stop_accepting()
        elif acceptor is not None:
            acceptor.close()  # asyncssh's: stops listening, connections stay open

    async def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
            await self.acceptor.wait_closed()
