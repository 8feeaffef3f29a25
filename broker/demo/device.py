"""SSH plumbing of the simulated device: listener, authentication, sessions, SFTP/SCP.

Sessions are binary (encoding=None). With a PTY the device behaves like a real terminal
line discipline: it echoes what is typed, handles backspace, Ctrl-U, Ctrl-C, Ctrl-D and
Enter (CR), and turns LF into CRLF on output. Without a PTY it reads plain lines from stdin.
The commands themselves live in `broker.demo.shell`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

import asyncssh

from broker.demo.device_state import DeviceIdentity, DeviceState, seed_root
from broker.demo.shell import ExitShell, Interrupted, Shell

_CR, _LF, _NUL, _ESC = 0x0D, 0x0A, 0x00, 0x1B
_CTRL_C, _CTRL_D, _CTRL_H, _CTRL_U, _DEL = 0x03, 0x04, 0x08, 0x15, 0x7F
_IGNORED_ON_READ = (asyncssh.TerminalSizeChanged, asyncssh.BreakReceived, asyncssh.SignalReceived)
_GONE = (asyncssh.Error, OSError, EOFError)


class _SessionIO:
    """`ShellIO` over one SSH session channel (see broker.demo.shell.ShellIO)."""

    def __init__(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        self._process = process
        self.interactive = process.term_type is not None
        self._pending = bytearray()
        self._after_cr = False

    def write(self, data: bytes) -> None:
        self._process.stdout.write(self._onlcr(data))

    def write_err(self, data: bytes) -> None:
        self._process.stderr.write(self._onlcr(data))

    async def drain(self) -> None:
        await self._process.stdout.drain()

    def term_size(self) -> tuple[int, int]:
        columns, rows, _, _ = self._process.term_size
        return columns, rows

    async def read_line(self, prompt: str = "", *, echo: bool = True) -> str | None:
        if not self.interactive:
            return await self._read_plain_line()
        self.write(prompt.encode("utf-8"))
        line = bytearray()
        while (byte := await self._next_byte()) is not None:
            after_cr, self._after_cr = self._after_cr, False
            if after_cr and byte in (_LF, _NUL):
                continue  # the second half of a CR LF / CR NUL Enter
            if byte in (_CR, _LF):
                self._after_cr = byte == _CR
                self.write(b"\n")
                return line.decode("utf-8", "replace")
            if byte == _CTRL_C:
                self.write(b"^C\n")
                raise Interrupted
            if byte == _CTRL_D and not line:
                return None
            if byte in (_DEL, _CTRL_H) and line:
                _drop_last_char(line)
                self._echo(b"\b \b", echo)
            elif byte == _CTRL_U:
                self._echo(b"\b \b" * len(line.decode("utf-8", "replace")), echo)
                line.clear()
            elif byte == _ESC:
                await self._skip_escape_sequence()
            elif byte >= 0x20:
                line.append(byte)
                self._echo(bytes([byte]), echo)
        return None

    def _onlcr(self, data: bytes) -> bytes:
        return data.replace(b"\n", b"\r\n") if self.interactive else data

    def _echo(self, data: bytes, echo: bool) -> None:
        if echo:
            self._process.stdout.write(data)

    async def _read(self, reader: asyncssh.SSHReader[bytes], line: bool) -> bytes:
        while True:
            try:
                return await (reader.readline() if line else reader.read(4096))
            except _IGNORED_ON_READ:
                continue  # window changes are tracked by the process itself

    async def _read_plain_line(self) -> str | None:
        data = await self._read(self._process.stdin, line=True)
        if not data:
            return None
        return data.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8", "replace")

    async def _next_byte(self) -> int | None:
        if not self._pending:
            self._pending.extend(await self._read(self._process.stdin, line=False))
            if not self._pending:
                return None
        return self._pending.pop(0)

    async def _skip_escape_sequence(self) -> None:
        """Ignore cursor keys and the like (ESC [ ... final byte, ESC O x, ESC x)."""
        introducer = await self._next_byte()
        if introducer not in (ord("["), ord("O")):
            return
        while (byte := await self._next_byte()) is not None and not 0x40 <= byte <= 0x7E:
            pass


def _drop_last_char(line: bytearray) -> None:
    """Remove the last UTF-8 character (continuation bytes and their lead byte)."""
    while line and line[-1] & 0xC0 == 0x80:
        line.pop()
    if line:
        line.pop()


class _DeviceSFTPServer(asyncssh.SFTPServer):
    """asyncssh's SFTP server, plus the exit status OpenSSH's sftp-server sends at the end
    (stock `scp`, which speaks SFTP, fails a transfer whose channel closes without one)."""

    def exit(self) -> None:
        with contextlib.suppress(OSError):  # the channel is already gone
            self.channel.exit(0)


class _DeviceSSHServer(asyncssh.SSHServer):
    """Authentication for one connection: the device's single service account."""

    def __init__(self, device: SimulatedDevice) -> None:
        self._device = device
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._device._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._device._connections.discard(self._conn)

    def begin_auth(self, username: str) -> bool:
        keys = self._device._authorized_keys
        if self._conn is not None and keys is not None and username == self._device.username:
            self._conn.set_authorized_keys(keys)
        return True

    def password_auth_supported(self) -> bool:
        return self._device.password is not None

    def validate_password(self, username: str, password: str) -> bool:
        ok = self._device._state.check_password(username, password)
        if not ok:
            self._device._state.log("WARN", f"login failed for '{username}' from {self._peer()}")
        return ok

    def auth_completed(self) -> None:
        self._device._state.log("INFO", f"login {self._device.username} from {self._peer()}")

    def _peer(self) -> str:
        peer = self._conn.get_extra_info("peername") if self._conn else None
        return str(peer[0]) if peer else "unknown"


class SimulatedDevice:
    """A running simulated device; create it with `start_simulated_device`."""

    def __init__(
        self,
        state: DeviceState,
        host: str,
        host_key: asyncssh.SSHKey,
        authorized_keys: str | None,
    ) -> None:
        self._state = state
        self.host = host
        self.port = 0
        self.host_key = host_key
        self.host_public_key = host_key.export_public_key("openssh").decode().strip()
        self.sessions_started = 0
        self._authorized_keys: asyncssh.SSHAuthorizedKeys | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self.set_authorized_keys(authorized_keys)

    @property
    def username(self) -> str:
        return self._state.username

    @property
    def password(self) -> str | None:
        return self._state.password

    @property
    def state(self) -> DeviceState:
        """What the device remembers (shared with its web UI, `broker.demo.web`)."""
        return self._state

    @property
    def root(self) -> Path:
        return self._state.root

    @property
    def identity(self) -> DeviceIdentity:
        return self._state.identity

    def set_password(self, new: str | None) -> None:
        """Change the service password (None disables password login)."""
        self._state.password = new

    def set_authorized_keys(self, authorized_keys: str | None) -> None:
        """Replace the keys accepted for public-key login (OpenSSH authorized_keys text)."""
        self._authorized_keys = (
            asyncssh.import_authorized_keys(authorized_keys) if authorized_keys else None
        )

    async def _listen(self, port: int) -> None:
        self._acceptor = await asyncssh.listen(
            self.host,
            port,
            server_factory=lambda: _DeviceSSHServer(self),
            server_host_keys=[self.host_key],
            process_factory=self._run_session,
            sftp_factory=self._sftp_server,
            allow_scp=True,
            encoding=None,
            line_editor=False,
            agent_forwarding=False,
            x11_forwarding=False,
            reuse_address=True,
        )
        self.port = self._acceptor.get_port()

    def _sftp_server(self, chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        self.sessions_started += 1
        return _DeviceSFTPServer(chan, chroot=os.fsencode(self.root))

    async def _run_session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        self.sessions_started += 1
        io = _SessionIO(process)
        shell = Shell(self._state, io)
        try:
            if process.command is not None:
                status = await _run_command(shell, process.command)
            else:
                status = await _run_shell(shell, io)
            await io.drain()
            process.exit(status)
        except _GONE:
            process.close()  # the client went away; nothing left to tell it

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self._acceptor is not None:
            self._acceptor.close()
        for conn in list(self._connections):
            conn.close()
        for conn in list(self._connections):
            await conn.wait_closed()
        if self._acceptor is not None:
            await self._acceptor.wait_closed()
            self._acceptor = None

    async def __aenter__(self) -> SimulatedDevice:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


async def _run_command(shell: Shell, command: str) -> int:
    try:
        return await shell.run(command)
    except ExitShell as exc:
        return exc.status
    except Interrupted:
        return 130


async def _run_shell(shell: Shell, io: _SessionIO) -> int:
    if io.interactive:
        io.write(shell.banner().encode("utf-8"))
    status = 0
    while True:
        try:
            line = await io.read_line(shell.prompt())
            if line is None:
                if io.interactive:
                    io.write(b"logout\n")
                return status
            status = await shell.run(line)
        except Interrupted:
            status = 130
        except ExitShell as exc:
            return exc.status


def _load_host_key(path: Path | None) -> asyncssh.SSHKey:
    """Read the host key at `path`, or generate an Ed25519 key (written 0600 if `path`)."""
    if path is not None and path.exists():
        return asyncssh.read_private_key(path)
    key = asyncssh.generate_private_key("ssh-ed25519")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.export_private_key())
    return key


async def start_simulated_device(
    root: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    username: str = "service",
    password: str | None = None,
    authorized_keys: str | None = None,
    host_key_path: Path | None = None,
    identity: DeviceIdentity = DeviceIdentity(),
) -> SimulatedDevice:
    """Seed `root` (missing files only) and start the device's SSH server.

    `port=0` picks a free port (see `.port`). Login is by `password` and/or a key in
    `authorized_keys`; with neither, nobody can log in until `set_password` is called.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    seed_root(root, identity)
    state = DeviceState(root, identity, username, password)
    device = SimulatedDevice(state, host, _load_host_key(host_key_path), authorized_keys)
    await device._listen(port)
    return device
