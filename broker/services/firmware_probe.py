"""Running a device's firmware probe around a technician's session.

The probe is an exec request on a connection of the broker's own to the device, logged in with
the vaulted credential (never a channel the technician can see): *before* as soon as the
session opens, concurrently with the technician's first channel; *after* once the session has
ended, however it ended, off the cut's path, so that a cut is never delayed. A probe that
fails (device unreachable, non-zero exit, too slow, too much output) never touches the
technician's session: it is recorded as ``probe failed: <reason>`` and audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import asyncssh
import structlog

from broker.aio import within
from broker.domain.firmware import OUTPUT_CAP, PROBE_TIMEOUT, Reading
from broker.errors import BrokerError, DeviceError
from broker.recording import SessionRecording
from broker.recording.flusher import FlushedFile
from broker.services.context import Context
from broker.services.firmware import Recorded, record_reading
from broker.ssh.upstream import connect_device

log = structlog.get_logger("broker.firmware")

# Sessions whose after-probe has not finished yet: a broker shutting down waits for them
# (:func:`settle`), so that a drain still records what the device says afterwards.
_open: set[SessionProbes] = set()
_tasks: set[asyncio.Future[None]] = set()  # finish_later's, referenced until done


async def run_probe(conn: asyncssh.SSHClientConnection, command: str,
                    timeout: float = PROBE_TIMEOUT, cap: int = OUTPUT_CAP) -> Reading:
    """Run ``command`` on the device as an exec request, reading at most ``cap`` bytes and
    waiting at most ``timeout`` seconds."""
    process: asyncssh.SSHClientProcess[bytes] | None = None
    try:
        async with asyncio.timeout(timeout):
            process = await conn.create_process(command, encoding=None)
            process.stdin.write_eof()
            output = bytearray()
            while len(output) <= cap:
                chunk = await process.stdout.read(cap + 1 - len(output))
                if not chunk:
                    break
                output += chunk
            if len(output) > cap:
                return Reading.failed(f"output longer than {cap} bytes")
            result = await process.wait(check=False)
    except TimeoutError:
        return Reading.failed(f"no answer within {timeout:g} s")
    except (asyncssh.Error, OSError) as exc:
        return Reading.failed(str(exc) or type(exc).__name__)
    finally:
        if process is not None:
            process.close()
    if result.exit_signal is not None:
        return Reading.failed(f"killed by signal {result.exit_signal[0]}")
    if result.exit_status is None:
        return Reading.failed("the device closed the connection before the probe ended")
    if result.exit_status:
        stderr = result.stderr if isinstance(result.stderr, bytes) else b""
        first = stderr.decode("utf-8", errors="replace").strip().split("\n")[0]
        return Reading.failed(f"exit status {result.exit_status}"
                              + (f" ({first})" if first else ""))
    if not output.strip():
        return Reading.failed("the probe printed nothing")
    return Reading.ok(bytes(output))


class SessionProbes:
    """The probe runs of one session, and their marker file in its recording."""

    def __init__(self, ctx: Context, device_id: int, session_id: str, command: str,
                 recording: SessionRecording | None, timeout: float = PROBE_TIMEOUT) -> None:
        self.ctx, self.device_id, self.session_id = ctx, device_id, session_id
        self.command, self.timeout = command, timeout
        self.started = time.monotonic()
        self._marker = (FlushedFile(recording.add_file("firmware-probe", ".jsonl"))
                        if recording is not None else None)
        self._before: asyncio.Task[None] | None = None
        self.done = asyncio.Event()
        _open.add(self)

    def start_before(self) -> None:
        """Probe now, without waiting for it: the technician's channel opens meanwhile."""
        self._before = asyncio.ensure_future(self._run("before"))

    async def after(self) -> None:
        """Probe once the before-probe is done, then close the marker file; bounded by the
        login and probe timeouts."""
        try:
            if self._before is not None:
                with contextlib.suppress(Exception):
                    # its login and its run are each bounded by the timeout
                    await within(2 * self.timeout + 1, asyncio.shield(self._before))
            await self._run("after")
        finally:
            if self._marker is not None:
                self._marker.close()
            self.done.set()
            _open.discard(self)

    async def finish(self, recording: SessionRecording | None, reason: str) -> None:
        """The after-probe, then the recording's close (it holds the probe's marker file).
        Call it once the session's end is on record, off the cut's path."""
        try:
            await self.after()
        finally:
            if recording is not None:
                await recording.close(reason)

    def finish_later(self, recording: SessionRecording | None, reason: str) -> None:
        """:meth:`finish` as a task of its own (for a lifecycle that ends inline)."""
        task = asyncio.ensure_future(self.finish(recording, reason))
        _tasks.add(task)
        task.add_done_callback(_tasks.discard)

    async def _run(self, phase: str) -> None:
        """One probe on a connection of its own: the session's may close any moment (a short
        exec, a cut), and the probe must not depend on it."""
        internal: str | None = None
        upstream: asyncssh.SSHClientConnection | None = None
        try:
            upstream = await connect_device(self.ctx, self.device_id, timeout=self.timeout)
            reading = await run_probe(upstream, self.command, self.timeout)
        except DeviceError as exc:
            reading, internal = Reading.failed(str(exc)), exc.internal
        except Exception as exc:  # whatever breaks, the run is recorded and the session lives
            log.exception("firmware probe failed unexpectedly", session=self.session_id)
            reading = Reading.failed(f"internal error in the broker ({type(exc).__name__})")
        finally:
            if upstream is not None:
                upstream.close()
        self._mark(phase, reading)
        try:
            outcome = await record_reading(self.ctx, self.device_id, self.session_id, phase,
                                           reading, internal)
        except (BrokerError, OSError) as exc:  # database away: log it
            log.error("firmware probe not recorded", session=self.session_id, phase=phase,
                      reading=reading.text, error=str(exc))
            return
        _log(self.session_id, phase, outcome)

    def _mark(self, phase: str, reading: Reading) -> None:
        if self._marker is None or self._marker.closed:
            return
        self._marker.write(json.dumps({
            "t": round(time.monotonic() - self.started, 6), "type": "firmware-probe",
            "phase": phase, "command": self.command, "output": reading.value,
            "error": reading.error}) + "\n")


def _log(session_id: str, phase: str, outcome: Recorded) -> None:
    log.info("firmware probe", session=session_id, phase=phase, verdict=outcome.verdict.value)


async def settle(timeout: float) -> None:
    """Wait (at most ``timeout`` seconds) for the after-probes of ended sessions."""
    pending = [asyncio.ensure_future(p.done.wait()) for p in list(_open)]
    if not pending:
        return
    _, late = await asyncio.wait(pending, timeout=timeout)
    for task in late:
        task.cancel()
    if late:
        log.warning("firmware probes still running at shutdown", count=len(late))
