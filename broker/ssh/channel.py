"""One SSH channel from a technician: refuse it with a reason, or relay it to the device
and record it. Shell channels are recorded as asciicast, exec channels as exec logs."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncssh
import structlog

from broker.domain.grants import Refusal
from broker.domain.protocols import Protocol
from broker.errors import BrokerError
from broker.recording import SessionRecording
from broker.services.sessions import audit_event, new_session_id, open_session
from broker.ssh.connection import BrokerConnection
from broker.ssh.menu import run_menu
from broker.ssh.streams import SSHReceive, SSHSend, pump

log = structlog.get_logger("broker.ssh")
NOTICE_TIMEOUT = 0.3
FORWARDED_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ")


async def handle_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
    owner = process.get_extra_info("connection").get_owner()
    assert isinstance(owner, BrokerConnection)
    await Channel(owner, process).run()


class Channel:
    def __init__(self, conn: BrokerConnection, process: asyncssh.SSHServerProcess[bytes]) -> None:
        self.conn, self.process = conn, process
        self.pty = process.get_terminal_type() is not None
        self.upstream: asyncssh.SSHClientProcess[bytes] | None = None
        self.closed = asyncio.Event()

    # -- entry -----------------------------------------------------------------------------
    async def run(self) -> None:
        target = self.conn.target
        assert target is not None
        try:
            if target.device is None:
                status = await run_menu(self.conn, self.process)
                self.process.exit(status)
                return
            if self.process.subsystem is not None:
                await self.refuse(f"the {self.process.subsystem!r} subsystem is not available"
                                  " through the broker", "subsystem")
                return
            await self.relay()
        except BrokerError as exc:
            await self.refuse(str(exc), "error")
        except (asyncssh.Error, OSError, ConnectionError) as exc:
            log.info("channel ended by transport", error=str(exc), session=self.conn.session_id)
            self.process.exit(255)
        except Exception:
            log.exception("channel failed", session=self.conn.session_id)
            await self.refuse("internal error in the broker; the event is logged", "error")

    async def relay(self) -> None:
        conn = self.conn
        access = await conn.access(Protocol.SSH)
        if not access.allowed:
            await self.refuse_access(access.decision.refusal, access.decision.detail)
            return
        assert access.grant is not None and access.device is not None
        assert access.technician is not None
        conn.device_id = access.device.id
        conn.grant_id, conn.ends_at = access.grant.id or 0, access.grant.end
        if conn.closing is not None:
            return
        upstream = await conn.upstream_connection()
        await self._open_session_once(access)
        await self._banner(access.grant.end)
        command = self.process.command
        width, height, _, _ = self.process.get_terminal_size()
        self.upstream = await upstream.create_process(
            command, term_type=self.process.get_terminal_type(),
            term_size=(width, height) if self.pty else None,
            env={k: v for k, v in self.process.env.items() if k in FORWARDED_ENV},
            encoding=None)
        conn.channels.add(self)
        try:
            await self._pump(command, width, height)
        finally:
            conn.channels.discard(self)
            self.closed.set()

    async def _open_session_once(self, access: Any) -> None:
        conn = self.conn
        if conn.session_id is not None:
            return
        now = conn.ctx.now()
        conn.session_id = new_session_id(now)
        conn.recording = SessionRecording.create(
            conn.ctx.config.recordings_dir, conn.session_id, now,
            {"technician": access.technician.name, "vendor": access.technician.vendor,
             "device": access.device.name, "grant": access.grant.id, "client": conn.peer,
             "node": conn.ctx.node})
        await open_session(conn.ctx, access.grant, access.technician, access.device, conn.peer,
                           "shell" if self.process.command is None else "exec",
                           conn.recording.path.name, conn.session_id)
        conn.services.sessions.add(conn)  # type: ignore[arg-type]
        hook = conn.services.on_session_change
        if callable(hook):
            hook()

    async def _pump(self, command: str | None, width: int, height: int) -> None:
        up, conn = self.upstream, self.conn
        assert up is not None and conn.recording is not None
        channel_no = conn.next_channel_number()
        if command is None or self.pty:
            # A PTY request may carry 0x0 (no real terminal); players need a size.
            cast = conn.recording.terminal(channel_no, width=width or 80, height=height or 24,
                                           term=self.process.get_terminal_type() or "",
                                           env=dict(self.process.env), command=command)
            on_in, on_out, on_err = cast.input, cast.output, cast.output
            on_resize, finish = cast.resize, cast.close
            closer: Any = None
        else:
            log_ = conn.recording.exec_log(channel_no, command)
            on_in, on_out, on_err = log_.stdin, log_.stdout, log_.stderr
            on_resize, finish, closer = _ignore_resize, log_.close, log_

        def control(event: Exception) -> None:
            if isinstance(event, asyncssh.TerminalSizeChanged):
                up.change_terminal_size(event.width, event.height)
                on_resize(event.width, event.height)
            elif isinstance(event, asyncssh.BreakReceived):
                up.send_break(event.msec)
            elif isinstance(event, asyncssh.SignalReceived):
                up.send_signal(event.signal)

        inbound = asyncio.ensure_future(pump(SSHReceive(self.process.stdin, control),
                                             SSHSend(up.stdin), on_in))
        try:
            await asyncio.gather(
                pump(SSHReceive(up.stdout), _NoEOF(self.process.stdout), on_out),
                pump(SSHReceive(up.stderr), _NoEOF(self.process.stderr), on_err))
            await up.wait_closed()
        finally:
            inbound.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await inbound
        status, signal = up.exit_status, up.exit_signal
        if closer is not None:
            closer.exit(status, signal[0] if signal else None)
        finish()
        if conn.closing is not None:
            return  # close_with() is ending the channel with its notice
        if signal:
            self.process.exit_with_signal(*signal)
        else:
            self.process.exit(status if status is not None else 255)

    # -- notices ---------------------------------------------------------------------------
    def _line(self, text: str) -> str:
        return f"{text}\r\n" if self.pty else f"{text}\n"

    async def _banner(self, ends: Any) -> None:
        if self.process.command is not None:
            return
        conn = self.conn
        self.process.stdout.write(self._line(
            f"broker: connected to {conn.device} as {conn.technician}; this session is"
            f" recorded; your access window closes at {ends:%Y-%m-%d %H:%M:%S} UTC.").encode())

    async def notice(self, text: str) -> None:
        self.process.stderr.write(self._line(f"\r\nbroker: {text}" if self.pty
                                             else f"broker: {text}").encode())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.stderr.drain(), NOTICE_TIMEOUT)

    async def close_with(self, reason: str) -> None:
        await self.notice(f"{reason}; the session is closed.")
        if self.upstream is not None:
            self.upstream.close()
        self.process.exit(1)

    async def refuse_access(self, refusal: Refusal | None, detail: str) -> None:
        conn = self.conn
        how = (f" To ask for access: ssh -p {conn.services.public_port} "
               f"{conn.technician}@{conn.services.public_host} request {conn.device}"
               " --for 2h --reason \"...\"")
        if refusal in (Refusal.RETIRED, Refusal.UNKNOWN_DEVICE, Refusal.DISABLED):
            how = ""
        await self.refuse(f"access to {conn.device} refused ({refusal}): {detail}.{how}",
                          str(refusal))

    async def refuse(self, message: str, reason: str) -> None:
        await audit_event(self.conn.ctx, "session.refused",
                          f"technician:{self.conn.technician}", self.conn.device or None,
                          reason=reason, detail=message, client=self.conn.peer)
        self.process.stderr.write(self._line(f"broker: {message}").encode())
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.stderr.drain(), NOTICE_TIMEOUT)
        self.process.exit(1)


def _ignore_resize(width: int, height: int) -> None:
    return None


class _NoEOF(SSHSend):
    """Downstream stdout/stderr: the channel's exit closes them, not an EOF of one stream."""

    async def send_eof(self) -> None:
        return None
