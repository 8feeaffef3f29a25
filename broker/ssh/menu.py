"""``ssh TECH@broker`` with no device: the technician's own grants, and how to ask for more."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING

import asyncssh

from broker.services.grants import grants_of

if TYPE_CHECKING:
    from broker.ssh.connection import BrokerConnection


async def run_menu(conn: BrokerConnection, process: asyncssh.SSHServerProcess[bytes]) -> int:
    pty = process.get_terminal_type() is not None
    end = "\r\n" if pty else "\n"

    def say(text: str = "", stream: asyncssh.SSHWriter[bytes] | None = None) -> None:
        (stream or process.stdout).write((text + end).encode())

    try:
        words = shlex.split(process.command or "")
    except ValueError as exc:
        say(f"broker: cannot parse the command: {exc}", process.stderr)
        return 2
    if words and words[0] not in ("grants", "list", "help"):
        say(f"broker: unknown command {words[0]!r}; try: grants, help", process.stderr)
        return 2
    host, port = conn.services.public_host, conn.services.public_port
    if words and words[0] == "help":
        say(f"ssh -p {port} {conn.technician}@{host}                 list your grants")
        say(f"ssh -p {port} {conn.technician}+DEVICE@{host}          open a shell on DEVICE")
        say(f"ssh -p {port} {conn.technician}+DEVICE@{host} CMD      run CMD on DEVICE")
        return 0
    rows = await grants_of(conn.ctx, conn.technician)
    if not rows:
        say(f"{conn.technician}: you have no current or upcoming grants.")
        return 0
    say(f"{conn.technician}: your grants")
    for row in rows:
        g = row.grant
        say(f"  grant {g.id}  {row.device.name:<20} {g.state:<9} "
            f"{g.start:%Y-%m-%d %H:%M}Z - {g.end:%Y-%m-%d %H:%M}Z  {','.join(g.protocols)}")
        say(f"      connect: ssh -p {port} {conn.technician}+{row.device.name}@{host}")
    return 0
