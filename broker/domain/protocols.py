"""The access protocols a grant can allow."""

from __future__ import annotations

from enum import StrEnum


class Protocol(StrEnum):
    SSH = "ssh"
    SFTP = "sftp"
    SCP = "scp"
    FORWARD = "forward"
    WEB = "web"


ALL_PROTOCOLS: frozenset[Protocol] = frozenset(Protocol)


class ProtocolError(ValueError):
    """An unknown protocol name."""


def parse_protocols(text: str) -> frozenset[Protocol]:
    """Parse ``ssh,sftp,scp`` into a set of :class:`Protocol`; raise :class:`ProtocolError`."""
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ProtocolError("no protocol given (choose from ssh, sftp, scp, forward, web)")
    result = set()
    for name in names:
        try:
            result.add(Protocol(name.lower()))
        except ValueError:
            raise ProtocolError(
                f"unknown protocol {name!r} (choose from ssh, sftp, scp, forward, web)"
            ) from None
    return frozenset(result)


def format_protocols(protocols: frozenset[Protocol] | set[Protocol]) -> str:
    return ",".join(sorted(p.value for p in protocols))
