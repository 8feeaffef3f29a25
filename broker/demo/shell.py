"""Command interpreter of the simulated device's service console.

No SSH here: `Shell` talks to its terminal through the small `ShellIO` protocol, so the same
interpreter serves interactive shells (with or without a PTY) and single exec commands.
`DeviceState` (:mod:`broker.demo.device_state`) is what the device remembers between
sessions.
"""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from broker.demo.device_state import (
    CONFIG_FILE,
    LOG_FILE,
    DeviceState,
    deterministic_bytes,
)

_CHUNK = 32 * 1024
_OPERATORS = ("|", ";", "&", ">", "<", "`", "$(")


class Interrupted(Exception):
    """The user pressed Ctrl-C while a line was being read."""


class ExitShell(Exception):
    """`exit`/`logout`: end the session with `status`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class ShellIO(Protocol):
    """The terminal a `Shell` runs on."""

    interactive: bool  # a PTY is attached: prompts are shown and input is echoed

    def write(self, data: bytes) -> None: ...
    def write_err(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    async def read_line(self, prompt: str = "", *, echo: bool = True) -> str | None:
        """One line without its terminator; None at end of input."""
        ...

    def term_size(self) -> tuple[int, int]:
        """(columns, rows) of the client's terminal, (0, 0) without a PTY."""
        ...


class _PathError(Exception):
    pass


def _unquoted_operator(line: str) -> str | None:
    """The first shell operator outside quotes (pipes etc. are not supported)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        else:
            for operator in _OPERATORS:
                if line.startswith(operator, index):
                    return operator
    return None


def _format_uptime(uptime: timedelta) -> str:
    hours, rest = divmod(uptime.seconds, 3600)
    return f"{uptime.days} days, {hours:02d}:{rest // 60:02d}:{rest % 60:02d}"


HELP = """\
Service console commands:
  help                     this text
  status                   pump state, battery, uptime, alarms
  logs [N]                 last N log lines (default 10)
  config show              current configuration
  config set KEY VALUE     change a configuration value
  uptime | whoami | hostname | size | pwd
  echo TEXT...             print TEXT
  ls [DIR] | cd DIR | cat FILE
  passwd                   change the service password
  chpasswd                 read user:password lines from standard input
  sleep N | seq N | bytes N
  true | false | exit [N] | logout
"""


class Shell:
    """One session's interpreter: a working directory and the commands."""

    def __init__(self, state: DeviceState, io: ShellIO) -> None:
        self.state = state
        self.io = io
        self.cwd: tuple[str, ...] = ()
        self.commands: dict[str, Callable[[list[str]], Awaitable[int]]] = {
            "help": self._help,
            "status": self._status,
            "logs": self._logs,
            "config": self._config,
            "uptime": self._uptime,
            "whoami": self._whoami,
            "hostname": self._hostname,
            "echo": self._echo,
            "cat": self._cat,
            "ls": self._ls,
            "cd": self._cd,
            "pwd": self._pwd,
            "size": self._size,
            "passwd": self._passwd,
            "chpasswd": self._chpasswd,
            "sleep": self._sleep,
            "seq": self._seq,
            "bytes": self._bytes,
            "true": self._true,
            "false": self._false,
            "exit": self._exit,
            "logout": self._exit,
        }

    def banner(self) -> str:
        ident = self.state.identity
        return (
            f"{ident.model} \u2014 service console, firmware {ident.firmware}, {ident.serial}\n"
            "Type 'help' for a list of commands.\n"
        )

    def prompt(self) -> str:
        return f"{self.state.identity.name}> "

    async def run(self, line: str) -> int:
        """Run one command line and return its exit status (raises ExitShell on exit)."""
        operator = _unquoted_operator(line)
        if operator:
            return self._fail(f"sh: '{operator}' is not supported on this device", 2)
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return self._fail(f"sh: syntax error: {exc}", 2)
        if not words:
            return 0
        command = self.commands.get(words[0])
        if command is None:
            return self._fail(f"{words[0]}: command not found", 127)
        return await command(words[1:])

    # -- output helpers

    def _say(self, text: str) -> None:
        self.io.write(text.encode("utf-8"))

    def _fail(self, message: str, status: int = 1) -> int:
        self.io.write_err(f"{message}\n".encode())
        return status

    # -- paths inside the device's file system

    def _resolve(self, name: str) -> tuple[tuple[str, ...], Path]:
        parts = [] if name.startswith("/") else list(self.cwd)
        for part in name.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise _PathError("Permission denied")
                parts.pop()
            else:
                parts.append(part)
        real = self.state.root.joinpath(*parts)
        if not real.resolve().is_relative_to(self.state.root):
            raise _PathError("Permission denied")
        return tuple(parts), real

    # -- commands

    async def _help(self, args: list[str]) -> int:
        self._say(HELP)
        return 0

    async def _status(self, args: list[str]) -> int:
        ident = self.state.identity
        self._say(
            f"device:    {ident.name} ({ident.model}, {ident.serial})\n"
            f"firmware:  {ident.firmware}\n"
            "state:     standby (no infusion running)\n"
            "battery:   87 % (on mains, charging)\n"
            f"uptime:    {_format_uptime(self.state.uptime())}\n"
            "alarms:    none\n"
        )
        return 0

    async def _logs(self, args: list[str]) -> int:
        if len(args) > 1 or (args and not args[0].isdigit()):
            return self._fail("usage: logs [N]", 2)
        count = int(args[0]) if args else 10
        try:
            lines = (self.state.root / LOG_FILE).read_text(encoding="utf-8").splitlines()
        except OSError:
            return self._fail(f"logs: /{LOG_FILE}: No such file or directory")
        for line in lines[-count:] if count else []:
            self._say(line + "\n")
        return 0

    async def _config(self, args: list[str]) -> int:
        try:
            if args == ["show"]:
                for key, value in self.state.read_config():
                    self._say(f"{key} = {value}\n")
                return 0
            if len(args) == 3 and args[0] == "set":
                key, value = args[1], args[2]
                if not self.state.set_config(key, value):
                    return self._fail(f"config: unknown key '{key}'")
                self.state.log("INFO", f"config changed by {self.state.username}: {key} = {value}")
                self._say(f"{key} = {value}\n")
                return 0
        except OSError:
            return self._fail(f"config: /{CONFIG_FILE}: No such file or directory")
        return self._fail("usage: config show | config set KEY VALUE", 2)

    async def _uptime(self, args: list[str]) -> int:
        clock = datetime.now(UTC).strftime("%H:%M:%S")
        self._say(f" {clock} up {_format_uptime(self.state.uptime())},  1 user\n")
        return 0

    async def _whoami(self, args: list[str]) -> int:
        self._say(f"{self.state.username}\n")
        return 0

    async def _hostname(self, args: list[str]) -> int:
        self._say(f"{self.state.identity.name}\n")
        return 0

    async def _echo(self, args: list[str]) -> int:
        self._say(" ".join(args) + "\n")
        return 0

    async def _cat(self, args: list[str]) -> int:
        if not args:
            return self._fail("usage: cat FILE...", 2)
        status = 0
        for name in args:
            try:
                _, path = self._resolve(name)
                self.io.write(path.read_bytes())
            except _PathError as exc:
                status = self._fail(f"cat: {name}: {exc}")
            except IsADirectoryError:
                status = self._fail(f"cat: {name}: Is a directory")
            except OSError:
                status = self._fail(f"cat: {name}: No such file or directory")
            await self.io.drain()
        return status

    async def _ls(self, args: list[str]) -> int:
        if len(args) > 1:
            return self._fail("usage: ls [DIR]", 2)
        name = args[0] if args else "."
        try:
            _, path = self._resolve(name)
            if path.is_file():
                self._say(f"{name}\n")
                return 0
            entries = sorted(path.iterdir(), key=lambda entry: entry.name)
        except _PathError as exc:
            return self._fail(f"ls: {name}: {exc}")
        except OSError:
            return self._fail(f"ls: {name}: No such file or directory")
        for entry in entries:
            self._say(entry.name + ("/" if entry.is_dir() else "") + "\n")
        return 0

    async def _cd(self, args: list[str]) -> int:
        name = args[0] if args else "/"
        try:
            parts, path = self._resolve(name)
        except _PathError as exc:
            return self._fail(f"cd: {name}: {exc}")
        if not path.is_dir():
            return self._fail(f"cd: {name}: No such directory")
        self.cwd = parts
        return 0

    async def _pwd(self, args: list[str]) -> int:
        self._say("/" + "/".join(self.cwd) + "\n")
        return 0

    async def _size(self, args: list[str]) -> int:
        columns, rows = self.io.term_size()
        self._say(f"{columns}x{rows}\n")
        return 0

    async def _passwd(self, args: list[str]) -> int:
        if args == ["--stdin"]:
            new = again = await self.io.read_line(echo=False)
        elif not args:
            new = await self.io.read_line("New password: ", echo=False)
            again = await self.io.read_line("Retype new password: ", echo=False)
        else:
            return self._fail("usage: passwd [--stdin]", 2)
        if new is None or again is None:
            return self._fail("passwd: unexpected end of input; password unchanged")
        if new != again:
            return self._fail("passwd: passwords do not match; password unchanged")
        if not new:
            return self._fail("passwd: empty password refused; password unchanged")
        self.state.password = new
        self.state.log("INFO", f"password changed for {self.state.username}")
        self._say("passwd: password updated successfully\n")
        return 0

    async def _chpasswd(self, args: list[str]) -> int:
        if args:
            return self._fail("usage: chpasswd  (reads user:password lines from stdin)", 2)
        status, number = 0, 0
        while (line := await self.io.read_line(echo=False)) is not None:
            number += 1
            if not line.strip():
                continue
            user, sep, password = line.partition(":")
            if not sep or not password:
                status = self._fail(f"chpasswd: line {number}: missing new password")
            elif user != self.state.username:
                status = self._fail(f"chpasswd: line {number}: user '{user}' does not exist")
            else:
                self.state.password = password
                self.state.log("INFO", f"password changed for {user} (chpasswd)")
        return status

    async def _sleep(self, args: list[str]) -> int:
        try:
            seconds = float(args[0]) if len(args) == 1 else -1.0
        except ValueError:
            seconds = -1.0
        if not 0 <= seconds < 1e6:
            return self._fail(f"sleep: invalid time interval '{' '.join(args)}'")
        await asyncio.sleep(seconds)
        return 0

    async def _seq(self, args: list[str]) -> int:
        if not 1 <= len(args) <= 2 or not all(arg.lstrip("-").isdigit() for arg in args):
            return self._fail("usage: seq [FIRST] LAST", 2)
        first, last = (1, int(args[0])) if len(args) == 1 else (int(args[0]), int(args[1]))
        batch: list[str] = []
        for number in range(first, last + 1):
            batch.append(f"{number}\n")
            if len(batch) == 4096:
                self._say("".join(batch))
                batch.clear()
                await self.io.drain()
        self._say("".join(batch))
        return 0

    async def _bytes(self, args: list[str]) -> int:
        if len(args) != 1 or not args[0].isdigit():
            return self._fail("usage: bytes N", 2)
        total, sent = int(args[0]), 0
        while sent < total:
            chunk = deterministic_bytes(min(_CHUNK, total - sent), sent)
            self.io.write(chunk)
            sent += len(chunk)
            await self.io.drain()
        return 0

    async def _true(self, args: list[str]) -> int:
        return 0

    async def _false(self, args: list[str]) -> int:
        return 1

    async def _exit(self, args: list[str]) -> int:
        if not args:
            raise ExitShell(0)
        if len(args) > 1 or not args[0].isdigit():
            self._fail(f"exit: {' '.join(args)}: numeric argument required")
            raise ExitShell(2)
        raise ExitShell(int(args[0]) & 0xFF)
