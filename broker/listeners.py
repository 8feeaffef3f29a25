"""The seam between ``broker serve`` and its protocol servers.

Each protocol the broker speaks is served by one :class:`ProtocolListener`: the technicians'
SSH service (:class:`broker.ssh.listener.SSHListener`), the staff portal, the device web UIs'
origin and the metrics endpoint (:class:`broker.http.site.WebSite`). ``broker serve`` starts
them in order, stops them accepting when it drains, and closes them at the end; it knows
nothing else about any of them. Draining the sessions themselves is protocol-neutral: every
live session is an :class:`broker.services.access_session.AccessSession` in the registry.
"""

from __future__ import annotations

from typing import Protocol


def split_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) of a ``listen`` setting."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class ProtocolListener(Protocol):
    @property
    def name(self) -> str:
        """What it serves, for log lines: ``ssh``, ``portal``, ``devices``, ``metrics``."""

    @property
    def port(self) -> int:
        """The port it listens on (known once started)."""

    async def start(self) -> None:
        """Listen; a port that cannot be bound is a :class:`broker.errors.ConfigError`
        naming the setting."""

    def stop_accepting(self) -> None:
        """Take no new connections; those already made go on (a drain)."""

    async def close(self) -> None:
        """Close the listener and whatever of its own is still open."""
