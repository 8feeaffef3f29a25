"""What a technician's session channel is: a shell, an exec, SFTP or legacy scp, and the
protocols of a grant that let it in."""

from __future__ import annotations

from dataclasses import dataclass

import asyncssh

from broker.domain.protocols import Protocol
from broker.domain.scp_command import ScpCommand, parse_or_none


@dataclass(frozen=True)
class Kind:
    name: str  # shell | exec | sftp | scp
    protocols: tuple[Protocol, ...]  # any one of them lets the channel in
    scp: ScpCommand | None = None  # the parsed scp command of an scp channel


def classify(process: asyncssh.SSHServerProcess[bytes]) -> Kind | None:
    if process.subsystem is not None:
        # OpenSSH >= 9 scp speaks SFTP: the subsystem serves grants for either protocol.
        return Kind("sftp", (Protocol.SFTP, Protocol.SCP)) if process.subsystem == "sftp" \
            else None
    command = process.command
    if command is None:
        return Kind("shell", (Protocol.SSH,))
    # scp never asks for a terminal: with one, even a plain scp command is an exec.
    scp = parse_or_none(command) if process.get_terminal_type() is None else None
    if scp is not None:
        return Kind("scp", (Protocol.SCP,), scp)
    return Kind("exec", (Protocol.SSH,))
