"""``ssh TECH@broker [COMMAND]`` with no device: the technician's grants, and asking for one.

    ssh -p 2222 TECH@broker                       list your grants
    ssh -p 2222 TECH@broker request DEVICE --for 2h [--wait] --reason TEXT...

Everything after ``--reason`` is the reason (see :mod:`broker.domain.inband`).
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
from typing import TYPE_CHECKING, NoReturn

import asyncssh

from broker.domain.durations import DurationError, format_duration, parse_duration
from broker.domain.inband import split_reason
from broker.domain.text import visible
from broker.errors import BrokerError
from broker.services.grants import grants_of
from broker.services.requests import Requests
from broker.services.vendors import account_refusal

if TYPE_CHECKING:
    from broker.ssh.connection import BrokerConnection

WAIT_POLL = 1.0


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _ArgumentError(message)


def _request_parser() -> _Parser:
    parser = _Parser(prog="request", add_help=False)
    parser.add_argument("device")
    parser.add_argument("--for", dest="duration", required=True)
    parser.add_argument("--reason", required=True)
    parser.add_argument("--wait", action="store_true")
    return parser


class Menu:
    def __init__(self, conn: BrokerConnection,
                 process: asyncssh.SSHServerProcess[bytes]) -> None:
        self.conn, self.process = conn, process
        self.end = "\r\n" if process.get_terminal_type() is not None else "\n"
        self.host, self.port = conn.services.public_host, conn.services.public_port

    def say(self, text: str = "") -> None:
        self.process.stdout.write((text + self.end).encode())

    def fail(self, text: str, status: int = 1) -> int:
        self.process.stderr.write((f"broker: {text}" + self.end).encode())
        return status

    async def run(self) -> int:
        split = split_reason(self.process.command or "")
        try:
            words = shlex.split(split.head)
        except ValueError as exc:
            return self.fail(f"cannot parse the command: {exc}", 2)
        if split.reason is not None:
            words.append(f"--reason={split.reason}")
        if split.wait:
            words.append("--wait")
        if not words or words[0] in ("grants", "list"):
            return await self.grants()
        if words[0] == "request":
            return await self.request(words[1:])
        if words[0] == "help":
            return self.help()
        if words[0] == "weblogin":
            return await self.weblogin(words[1:])
        return self.fail(f"unknown command {words[0]!r}; commands: grants, request, weblogin,"
                         " help", 2)

    def help(self) -> int:
        me = f"ssh -p {self.port} {self.conn.technician}"
        self.say(f"{me}@{self.host}                     list your grants")
        self.say(f"{me}@{self.host} request DEVICE --for 2h [--wait] --reason TEXT...")
        self.say(f"{me}@{self.host} weblogin DEVICE     a one-time link to DEVICE's web UI")
        self.say(f"{me}+DEVICE@{self.host}              open a shell on DEVICE")
        self.say(f"{me}+DEVICE@{self.host} CMD          run CMD on DEVICE")
        return 0

    async def grants(self) -> int:
        tech = self.conn.technician
        refused = await account_refusal(self.conn.ctx, tech)
        if refused is not None:
            return self.fail(f"{tech}: {refused}")
        rows = await grants_of(self.conn.ctx, tech)
        if not rows:
            self.say(f"{tech}: you have no current or upcoming grants.")
            return 0
        self.say(f"{tech}: your grants")
        for row in rows:
            g = row.grant
            self.say(f"  grant {g.id}  {row.device.name:<20} {g.state:<9} "
                     f"{g.start:%Y-%m-%d %H:%M}Z - {g.end:%Y-%m-%d %H:%M}Z  "
                     f"{','.join(g.protocols)}" + ("  BREAK-GLASS" if g.breakglass else ""))
            self.say(f"      connect: ssh -p {self.port} {tech}+{row.device.name}@{self.host}")
        return 0

    async def weblogin(self, args: list[str]) -> int:
        from broker.services.web_signin import SIGNIN_TTL, create_signin

        if len(args) != 1:
            return self.fail("weblogin: usage: weblogin DEVICE", 2)
        try:
            token, row = await create_signin(self.conn.ctx, self.conn.technician, args[0],
                                           self.conn.peer)
        except BrokerError as exc:
            return self.fail(f"weblogin: {exc}")
        from broker.webproxy.origin import signin_url

        self.say(signin_url(self.conn.ctx.config.settings, row.grant_id, token))
        self.say(f"(open it in your browser within {int(SIGNIN_TTL.total_seconds() // 60)}"
                 " minutes; it works once)")
        return 0

    async def request(self, args: list[str]) -> int:
        try:
            parsed = _request_parser().parse_args(args)
            duration = parse_duration(parsed.duration)
        except (_ArgumentError, DurationError) as exc:
            return self.fail(f"request: {exc}; usage: request DEVICE --for 2h [--wait]"
                             " --reason TEXT... (everything after --reason is the reason)", 2)
        tech = self.conn.technician
        requests = Requests(self.conn.ctx, f"technician:{tech}")
        try:
            created = await requests.create(tech, parsed.device, duration, parsed.reason)
        except BrokerError as exc:
            return self.fail(f"request: {exc}", exc.exit_status)
        self.say(f"request {created.id} filed: {parsed.device} for {format_duration(duration)};"
                 " the approvers have been asked.")
        if not parsed.wait:
            return 0
        self.say("waiting for the decision (Ctrl-C stops waiting, not the request)...")
        return await self.wait(requests, created.id or 0)

    async def wait(self, requests: Requests, ident: int) -> int:
        while True:
            view = await requests.show(ident)
            state = view.request.state
            if state == "approved" and view.grant is not None:
                g = view.grant
                self.say(f"request {ident} approved: grant {g.id}, {g.start:%H:%M:%S}Z -"
                         f" {g.end:%H:%M:%S}Z. Connect: ssh -p {self.port}"
                         f" {self.conn.technician}+{view.device.name}@{self.host}")
                return 0
            if state != "pending":
                reasons = [visible(d.comment) for d, _ in view.approvals if d.comment]
                return self.fail(f"request {ident} {state}"
                                 + (f": {'; '.join(reasons)}" if reasons else ""))
            await asyncio.sleep(WAIT_POLL)


async def run_menu(conn: BrokerConnection, process: asyncssh.SSHServerProcess[bytes]) -> int:
    return await Menu(conn, process).run()
