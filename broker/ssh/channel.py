"""One SSH session channel from a technician: refuse it with a reason, or relay it to the
device and record it. Shells are recorded as asciicast, exec channels as exec logs, SFTP
(which OpenSSH 9's scp uses too) and legacy scp as file-operation logs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from datetime import datetime

import asyncssh
import structlog

from broker.aio import within
from broker.domain.file_rules import FileRules
from broker.domain.grants import Refusal
from broker.domain.scp_command import build
from broker.errors import BrokerError, RecordingUnavailable, StoreError
from broker.recording import SessionRecording
from broker.recording.asciicast import AsciicastWriter, ExecLog
from broker.recording.files import Kind as Recorded
from broker.recording.scp import SCPRecorder
from broker.recording.sftp import SFTPRecorder
from broker.scan.hold import Scanner, scanner_from
from broker.services.breakglass import BANNER as BREAKGLASS_BANNER
from broker.services.policies import applicable_rules
from broker.services.readiness import DATABASE_REFUSAL
from broker.ssh.channel_kind import Kind, classify
from broker.ssh.connection import BrokerConnection
from broker.ssh.menu import run_menu
from broker.ssh.scp_guard import ScpGuard, direction_refusal, scp_target_is_dir
from broker.ssh.session_guard import guard_input, may_start, resized_to, shown_to
from broker.ssh.sftp_guard import SFTPGuard
from broker.ssh.streams import SendStream, SSHReceive, SSHSend, SSHSendNoEOF, pump
from broker.ssh.taps import Taps, counted, ignore
from broker.ssh.transfer_audit import TransferAudit
from broker.ssh.transfer_relay import Guard, TransferRelay

log = structlog.get_logger("broker.ssh")
NOTICE_TIMEOUT = 0.3
CLOSE_TIMEOUT = 0.4
CUT_STATUS = 1  # the exit status of a channel the broker closed (revoke, kill, window end)
FORWARDED_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ")
# Values passed on to the device: locale and zone names only, never a path or shell text.
ENV_VALUE = re.compile(r"[A-Za-z0-9_.@+-]{1,64}\Z")
SIGNALS = frozenset({"ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT",
                     "SEGV", "TERM", "USR1", "USR2"})
LOCALE_NAME = re.compile(r"LC_[A-Z]{1,20}\Z")
TERM_TYPE = re.compile(r"[A-Za-z0-9_.+-]{1,64}\Z")


async def handle_process(process: asyncssh.SSHServerProcess[bytes]) -> None:
    owner = process.get_extra_info("connection").get_owner()
    assert isinstance(owner, BrokerConnection)
    await Channel(owner, process).run()


def _ignore_control(_event: Exception) -> None:
    return None  # a resize meanwhile: the process starts with the terminal's current size


class Channel:
    def __init__(self, conn: BrokerConnection, process: asyncssh.SSHServerProcess[bytes]) -> None:
        self.conn, self.process = conn, process
        self.pty = process.get_terminal_type() is not None
        self.upstream: asyncssh.SSHClientProcess[bytes] | None = None
        self.record: AsciicastWriter | ExecLog | None = None  # where markers go
        self.files = FileRules()  # the policy's file transfer rules (sftp and scp channels)
        self.transfers: TransferAudit | None = None  # file refusals and scan verdicts
        self.scanner: Scanner | None = None  # [scan]: uploads held until the scanner judged
        # the technician's environment variables passed on to the device (locale only)
        self.device_env = {k: v for k, v in process.env.items()
                           if k in FORWARDED_ENV and isinstance(v, str) and ENV_VALUE.match(v)}
        # audited when dropped: anything but the other locale variables clients send by default
        self.dropped_env = sorted(str(k) for k, v in process.env.items()
                                  if k not in self.device_env and not (
                                      LOCALE_NAME.match(str(k)) and ENV_VALUE.match(str(v))))

    async def run(self) -> None:
        target = self.conn.target
        assert target is not None
        try:
            if target.device is None:
                self.process.exit(await run_menu(self.conn, self.process))
                return
            kind = classify(self.process)
            if kind is None:
                await self.refuse(f"the {self.process.subsystem!r} subsystem is not available"
                                  " through the broker", "subsystem")
                return
            term = self.process.get_terminal_type()
            if term is not None and not TERM_TYPE.match(term):
                await self.refuse(f"terminal type {_shown(term)} is not accepted", "terminal")
                return
            await self.relay(kind)
        except StoreError as exc:  # never the database's address to a technician
            log.error("channel refused: database unreachable", error=str(exc))
            await self.refuse(DATABASE_REFUSAL, "database-unreachable")
        except BrokerError as exc:
            await self.refuse(str(exc), getattr(exc, "reason", "error"),
                              getattr(exc, "internal", None))
        except (asyncssh.Error, OSError, ConnectionError) as exc:
            log.info("channel ended by transport", error=str(exc), session=self.conn.session_id)
            self.process.exit(255)
        except Exception:
            log.exception("channel failed", session=self.conn.session_id)
            await self.refuse("internal error in the broker; the event is logged", "error")

    async def relay(self, kind: Kind) -> None:
        conn = self.conn
        node = conn.services.node
        if conn.session_id is None and node is not None and node.database_error is not None:
            await self.refuse(DATABASE_REFUSAL, "database-unreachable")
            return
        access = await conn.access(*kind.protocols)
        if not access.allowed:
            await self.refuse_access(access.decision.refusal, access.decision.detail, kind)
            return
        assert access.grant is not None
        upstream = await conn.upstream_connection(access)
        await conn.ensure_session(access, kind.name)
        if conn.closing is not None:
            return
        if kind.name in ("sftp", "scp"):
            assert access.technician is not None and access.device is not None
            _, rules = applicable_rules(conn.ctx.policies(), access.technician, access.device)
            self.files = rules.files
            self.transfers = TransferAudit(conn.audit, conn.session_id, self.process.stderr
                                           if self.process.subsystem is not None else None)
            if kind.scp is None or kind.scp.upload:
                self.scanner = scanner_from(conn.ctx.config.settings.scan,
                                            conn.ctx.config.data_dir)
            refusal = direction_refusal(self.files, kind.scp) if kind.scp else None
            if refusal is not None and kind.scp is not None:
                await self.refuse_transfer(refusal, kind)
                return
        await self._banner(access.grant.end, access.grant.breakglass)
        conn.channels.add(self)
        try:
            await self._start(kind, upstream)
        finally:
            conn.channels.discard(self)

    async def _start(self, kind: Kind, upstream: asyncssh.SSHClientConnection) -> None:
        conn, rules = self.conn, self.conn.session_rules
        # a terminal's input typed while the session waits for a supervisor is dropped
        typed = SSHReceive(self.process.stdin, _ignore_control) if self.pty else None
        if rules.guarded and not await may_start(self, kind.name, self.process.command, rules,
                                                 conn.supervision, self._record_refusal,
                                                 typed):
            return
        if conn.closing is not None:
            return
        width, height, _, _ = self.process.get_terminal_size()
        if kind.name == "sftp":
            self.upstream = await upstream.create_process(subsystem="sftp", encoding=None)
        else:
            # scp: the broker's own command from the parsed parts, never the technician's text
            command = build(kind.scp) if kind.scp is not None else self.process.command
            self.upstream = await upstream.create_process(
                command, term_type=self.process.get_terminal_type(),
                term_size=(width, height) if self.pty else None, env=self.device_env,
                encoding=None)
        assert conn.recording is not None
        if self.dropped_env:
            await conn.audit("channel.env_dropped", names=[
                n[:64].encode("unicode_escape").decode("ascii") for n in self.dropped_env])
        try:
            taps = counted(self._taps(kind, conn.recording, width, height))
        except RecordingUnavailable:
            self.upstream.close()  # the device's side goes, unused: refused in run()
            raise
        sink: SendStream = SSHSend(self.upstream.stdin)
        if rules.guarded:
            sink, view = guard_input(sink, self, rules, conn.supervision, self.pty, width,
                                     height)
            if view is not None:
                taps = dataclasses.replace(taps, stdout=shown_to(view, taps.stdout),
                                           stderr=shown_to(view, taps.stderr),
                                           resize=resized_to(view, taps.resize))
        relay = None
        if not self.files.unrestricted or self.scanner is not None:
            target_is_dir = await scp_target_is_dir(upstream, kind.scp, self.files)
            relay = self._transfer_relay(kind, taps, target_is_dir)
        try:
            await self._pump(taps, sink, relay)
        finally:
            if relay is not None:
                relay.close()

    def _record_refusal(self, label: str) -> None:
        """An exec command refused before it started: its log, the marker, exit 1."""
        assert self.conn.recording is not None and self.process.command is not None
        log = self.conn.recording.exec_log(self.conn.next_channel_number(),
                                           self.process.command)
        log.marker(label)
        log.exit(1)
        log.close()

    def mark(self, label: str) -> None:
        if self.record is not None:
            self.record.marker(label)

    async def audit(self, kind: str, **data: object) -> None:
        await self.conn.audit(kind, session_id=self.conn.session_id, **data)

    def _taps(self, kind: Kind, recording: SessionRecording, width: int, height: int) -> Taps:
        number = self.conn.next_channel_number()
        command = self.process.command
        if kind.name == "sftp":
            sftp = SFTPRecorder(recording.file_for(Recorded.SFTP, number))
            return Taps(sftp.from_client, sftp.from_server, ignore,
                        lambda _status, _signal: sftp.close())
        if kind.scp is not None:
            scp = SCPRecorder(recording.file_for(Recorded.SCP, number), kind.scp,
                              requested=command)
            return Taps(scp.from_client, scp.from_server, ignore,
                        lambda status, _signal: scp.close(status))
        if command is None or self.pty:
            # A PTY request may carry 0x0 (no real terminal); players need a size.
            cast = recording.terminal(number, width=width or 80, height=height or 24,
                                      term=self.process.get_terminal_type() or "",
                                      env=self.device_env, command=command)
            self.record = cast
            return Taps(cast.input, cast.output, cast.output,
                        lambda _status, _signal: cast.close(), cast.resize)
        exec_log = self.record = recording.exec_log(number, command)

        def finish_exec(status: int | None, signal: str | None) -> None:
            exec_log.exit(status, signal)
            exec_log.close()

        return Taps(exec_log.stdin, exec_log.stdout, exec_log.stderr, finish_exec)

    def _transfer_relay(self, kind: Kind, taps: Taps, target_is_dir: bool | None
                        ) -> TransferRelay:
        """The relay sinks that apply the file rules (see broker/ssh/transfer_relay.py)."""
        assert self.upstream is not None and self.transfers is not None
        note = self.transfers.add
        guard: Guard = (ScpGuard(self.files, kind.scp, note, target_is_dir=target_is_dir,
                                 scanner=self.scanner)
                        if kind.scp else SFTPGuard(self.files, note, scanner=self.scanner))
        upload = kind.scp.upload if kind.scp else True
        upstream = self.upstream

        def cut(why: str) -> None:
            note(f"broker: transfer cut: {why}", "protocol-error", "")
            upstream.close()

        # the recorder hears the source's bytes as sent and the answers as received
        return TransferRelay(guard, upstream.stdin, self.process.stdout, taps.from_client,
                             taps.stdout, raw_client=upload, raw_server=not upload,
                             audit=self.transfers.flush, cut=cut)

    async def refuse_transfer(self, message: str, kind: Kind) -> None:
        """Refuse a whole legacy scp command on its protocol channel (scp prints it); the
        recording shows the command and the refusal."""
        assert kind.scp is not None and self.conn.recording is not None
        assert self.transfers is not None
        self.transfers.add(message, "upload" if kind.scp.upload else "download",
                           kind.scp.path)
        await self.transfers.flush()
        line = b"\x01" + message.encode("utf-8", "backslashreplace") + b"\n"
        taps = self._taps(kind, self.conn.recording, 0, 0)
        taps.stdout(line)
        taps.finish(1, None)
        self.process.stdout.write(line)
        with contextlib.suppress(Exception):
            await within(NOTICE_TIMEOUT, self.process.stdout.drain())
        self.process.exit(1)

    async def _pump(self, taps: Taps, sink: SendStream,
                    relay: TransferRelay | None = None) -> None:
        up = self.upstream
        assert up is not None
        inbound_sink: SendStream = sink
        outbound_sink: SendStream = SSHSendNoEOF(self.process.stdout)
        client_tap, stdout_tap = taps.from_client, taps.stdout
        if relay is not None:
            inbound_sink, outbound_sink = relay.inbound, relay.outbound
            client_tap, stdout_tap = relay.tap_client, relay.tap_server

        def control(event: Exception) -> None:
            if isinstance(event, asyncssh.TerminalSizeChanged):
                up.change_terminal_size(event.width, event.height)
                taps.resize(event.width, event.height)
            elif isinstance(event, asyncssh.BreakReceived):
                up.send_break(event.msec)
            elif isinstance(event, asyncssh.SignalReceived) and event.signal in SIGNALS:
                up.send_signal(event.signal)  # only the names RFC 4254 defines

        inbound = asyncio.ensure_future(pump(SSHReceive(self.process.stdin, control),
                                             inbound_sink, client_tap))
        try:
            await asyncio.gather(
                pump(SSHReceive(up.stdout), outbound_sink, stdout_tap),
                pump(SSHReceive(up.stderr), SSHSendNoEOF(self.process.stderr), taps.stderr))
            await up.wait_closed()
        finally:
            inbound.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await inbound
            status, signal = up.exit_status, up.exit_signal
            taps.finish(status, signal[0] if signal else None)
        if self.conn.closing is not None:
            self.conn.exit_status = CUT_STATUS
            return  # close_with() is ending the channel with its notice
        # what the technician's ssh exits with (OpenSSH exits 255 for a remote signal)
        self.conn.exit_status = 255 if signal or status is None else status
        if signal:
            self.process.exit_with_signal(*signal)
        else:
            self.process.exit(status if status is not None else 255)

    # -- notices ---------------------------------------------------------------------------
    def _line(self, text: str) -> bytes:
        return f"{text}\r\n".encode() if self.pty else f"{text}\n".encode()

    async def _banner(self, ends: datetime, breakglass: bool = False) -> None:
        if self.process.subsystem is not None:
            return
        if breakglass:  # loud on every channel that has a terminal or stderr to show it on
            loud = self._line(f"*** {BREAKGLASS_BANNER} ***")
            (self.process.stdout if self.process.command is None else self.process.stderr
             ).write(loud)
        if self.process.command is not None:
            return
        conn = self.conn
        self.process.stdout.write(self._line(
            f"broker: connected to {conn.device} as {conn.technician}; this session is"
            f" recorded; your access window closes at {ends:%Y-%m-%d %H:%M:%S} UTC."))

    async def notice(self, text: str) -> None:
        if self.process.subsystem is not None:
            return  # SFTP's stderr is not shown to the user; the exit says enough
        self.process.stderr.write(self._line(f"\r\nbroker: {text}" if self.pty
                                             else f"broker: {text}"))
        with contextlib.suppress(Exception):
            await within(NOTICE_TIMEOUT, self.process.stderr.drain())

    async def close_with(self, reason: str) -> None:
        await self.notice(f"{reason}; the session is closed.")
        if self.upstream is not None:
            self.upstream.close()
        self.conn.exit_status = CUT_STATUS
        self.process.exit(CUT_STATUS)
        # Let the exit status and channel close reach the client before the connection
        # is dropped, so that it exits with 1 and the notice rather than "disconnected".
        with contextlib.suppress(Exception):
            await within(CLOSE_TIMEOUT, self.process.channel.wait_closed())

    async def refuse_access(self, refusal: Refusal | None, detail: str,
                            kind: Kind | None = None) -> None:
        conn = self.conn
        if refusal is Refusal.PROTOCOL and kind is not None and kind.name == "exec":
            detail = (f"{detail}; only a plain 'scp -t|-f PATH' transfer (no shell syntax, no"
                      " other command, no terminal) counts as scp, anything else needs ssh")
        how = (f" To ask for access: ssh -p {conn.services.public_port} "
               f"{conn.technician}@{conn.services.public_host} request {conn.device}"
               " --for 2h --reason WHY...")
        if refusal in (Refusal.RETIRED, Refusal.UNKNOWN_DEVICE, Refusal.DISABLED,
                       Refusal.ACCOUNT_EXPIRED, Refusal.VENDOR_DISABLED, Refusal.CONTRACT_ENDED):
            how = ""
        await self.refuse(f"access to {conn.device} refused ({refusal}): {detail}.{how}",
                          str(refusal))

    async def refuse(self, message: str, reason: str, internal: str | None = None) -> None:
        extra = {"internal": internal} if internal else {}
        command = self.process.command
        if command is not None:
            extra["command"] = command[:1024]
        refusing = asyncio.get_running_loop().create_future()
        self.conn.refusing.add(refusing)  # a cut meanwhile waits for the line and the exit
        try:
            await self.conn.audit_refusal("session.refused", reason=reason, detail=message,
                                          **extra)
            self.process.stderr.write(self._line(f"broker: {message}"))
            with contextlib.suppress(Exception):
                await within(NOTICE_TIMEOUT, self.process.stderr.drain())
            self.process.exit(1)
        finally:
            refusing.set_result(None)
            self.conn.refusing.discard(refusing)


def _shown(text: str) -> str:
    """A technician's string made safe to echo on one line."""
    return ascii(text if len(text) <= 40 else text[:40] + "...")
