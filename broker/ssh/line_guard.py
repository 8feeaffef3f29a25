"""The technician's input under a policy's command rules and supervision.

:class:`GuardedInput` stands between a channel's input pump and the device (it is the pump's
sink). While supervision holds input (paused, or a required supervisor absent) what the
technician types is dropped, and they are told so once. In a shell with command rules, input
is cut at each submit key (:func:`broker.domain.typed_line.split_submits`); the text before it
is forwarded (editing a line runs nothing), and the submit key itself is forwarded only after
the line passed the rules. The line is judged as typed (:class:`TypedLine`) **and** as the
terminal shows it (:class:`TerminalView`); when the typed line cannot be known (history, Tab,
Ctrl-R...) the broker first waits for the device's echo, and also checks every tail of the shown
line that starts after a blank or a colon, so that anchored expressions fail closed.

A denied line is never submitted: the technician sees the rule's message on one line and the
broker sends Ctrl-C (after ending a bracketed paste) once the line's echo is drawn, which makes
the shell drop the line, and again if the shell kept it. The next input waits until the shell
has drawn its new prompt (at most :data:`CANCEL_SETTLE_MAX` a Ctrl-C): the next line starts
there, not somewhere in the late echo of the refused one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

from broker.domain.session_rules import CommandAction, CommandRule, SessionRules, first_match
from broker.domain.typed_line import PASTE_END, TypedLine, split_submits
from broker.services.supervision import Supervision
from broker.ssh.screen import TerminalView
from broker.ssh.streams import ReceiveStream, SendStream

SUPERVISE_WAIT = 600.0  # seconds a command waits for a supervisor before it is refused
CANCEL_LINE = b"\x03"  # Ctrl-C: every shell (and the tty's line discipline) drops the line
CANCEL_SETTLE_MAX = 3.0  # seconds the next input waits for the shell's prompt after a Ctrl-C
CANCEL_TRIES = 3  # Ctrl-Cs sent at most while the shell keeps a refused line
MAX_TAILS = 200
SHOWN_LIMIT = 1024  # characters of a line kept in audit events and markers

class GuardHost(Protocol):
    """What the guard needs of its channel."""

    async def notice(self, text: str) -> None: ...

    def mark(self, label: str) -> None: ...

    async def audit(self, kind: str, **data: object) -> None: ...

def shown(text: str) -> str:
    """A line for audit events and markers: bounded, control characters escaped."""
    cut = text[:SHOWN_LIMIT]
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in cut)

def tails(line: str) -> list[str]:
    """Every tail of ``line`` starting after a blank or a colon (at most :data:`MAX_TAILS`)."""
    out = [line[i + 1:] for i, c in enumerate(line) if c.isspace() or c in ":'`"]
    return [t for t in out if t.strip()][:MAX_TAILS]

async def wait_for_supervisor(host: GuardHost, supervision: Supervision, what: str,
                              timeout: float | None = None,
                              dropping: ReceiveStream | None = None) -> bool:
    """Hold ``what`` until a supervisor is present and input is open; False on timeout.
    Meanwhile what arrives on ``dropping`` (a terminal's input) is read and dropped, so that
    nothing typed while nobody watched reaches the device later."""
    if supervision.present and supervision.input_open:
        return True
    timeout = SUPERVISE_WAIT if timeout is None else timeout
    minutes = max(1, round(timeout / 60))
    await host.notice(f"{what} needs a hospital supervisor watching: waiting up to"
                      f" {minutes} min for one to join (approvers have been told);"
                      " what you type meanwhile is dropped")
    await host.audit("session.supervision_wanted", waiting_for=shown(what))
    drop = asyncio.ensure_future(_drop(dropping)) if dropping is not None else None
    try:
        present = await supervision.wait_present(timeout)
        return present and await supervision.wait_open(timeout)
    finally:
        if drop is not None:
            drop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await drop


async def _drop(source: ReceiveStream) -> None:
    while await source.receive():
        pass

class GuardedInput:
    """A :class:`SendStream` to the device that applies session rules to what is sent."""

    def __init__(self, sink: SendStream, host: GuardHost, rules: SessionRules,
                 supervision: Supervision, view: TerminalView | None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sink, self.host, self.rules = sink, host, rules
        self.supervision, self.view = supervision, view
        self.typed = TypedLine()
        self._clock = clock
        self._sent_at = 0.0
        self._in_line = False
        self._told_held = False

    async def send(self, data: bytes) -> None:
        if not self.supervision.input_open:
            if not self._told_held:
                self._told_held = True
                await self.host.notice(self._held_text())
            return
        self._told_held = False
        if self.view is None or not self.rules.commands:
            await self._forward(data)
            return
        for before, key in split_submits(data):
            if before:
                self._start_line()
                self.typed.feed(before)
                if CANCEL_LINE in before:
                    # the shell drops the line and prompts on a new row: judge the row the
                    # cursor is on from its first column (the old start would reach back)
                    self.view.line_done()
                await self._forward(before)
            if key and not await self._submit(key):
                return  # the line was refused: the rest of this input is dropped

    async def send_eof(self) -> None:
        await self.sink.send_eof()

    def _held_text(self) -> str:
        if self.supervision.paused_by is not None:
            return (f"input is paused by hospital supervisor {self.supervision.paused_by};"
                    " what you type is dropped until they resume it")
        return ("this session needs a hospital supervisor watching: what you type is dropped"
                " until one joins")

    async def _forward(self, data: bytes) -> None:
        self._sent_at = self._clock()  # (an echo may come back before the send returns)
        await self.sink.send(data)

    def _start_line(self) -> None:
        if not self._in_line and self.view is not None:
            self.view.line_started()
            self._in_line = True

    async def _submit(self, key: bytes) -> bool:
        """Check the line at a submit key; forward the key if it passes."""
        assert self.view is not None
        self._start_line()
        candidates = list(self.typed.lines())
        if not self.typed.reliable:
            await self.view.settled(self._sent_at)
        on_screen = self.view.shown()
        candidates += on_screen
        if not self.typed.reliable:
            candidates += [t for line in on_screen for t in tails(line)]
        rule = first_match(self.rules.commands, *candidates)
        line = self.typed.line if self.typed.reliable else on_screen[0]
        if rule is not None and rule.action is CommandAction.SUPERVISE:
            allowed = await wait_for_supervisor(self.host, self.supervision,
                                                "this command")
            if not allowed:
                if not self.supervision.closed:  # (else the session was cut meanwhile)
                    await self._refuse(rule, line, "no supervisor joined in time")
                return False
        elif rule is not None and rule.action is CommandAction.DENY:
            await self._refuse(rule, line, None)
            return False
        if self.typed.pasting:  # a newline inside a bracketed paste: into the buffer
            self.typed.newline_in_paste()
            await self._forward(key)
        else:
            await self._forward(key)
            self._line_done()
        if rule is not None:
            await self._allowed(rule, line)
        return True

    def _line_done(self, forget_start: bool = True) -> None:
        self.typed.reset()
        self._in_line = False
        if self.view is not None and forget_start:
            self.view.line_done()

    async def _refuse(self, rule: CommandRule, line: str, why: str | None) -> None:
        cancel = (PASTE_END.encode() if self.typed.pasting else b"") + CANCEL_LINE
        reliable = self.typed.reliable
        await self.host.notice(f"refused by policy: {rule.message}"
                               + (f" ({why})" if why else ""))
        self.host.mark(f"command denied: {shown(line)}")
        await self.host.audit("command.denied", channel="shell", command=shown(line),
                              rule=rule.match, action=rule.action.value, message=rule.message,
                              typed_line_known=reliable,
                              **({"why": why} if why else {}))
        dropped = await self._cancel_line(cancel)
        self._line_done(forget_start=dropped)
        if not dropped:
            # the shell kept the refused line: the next one is judged from where the refused
            # one began, as a line whose text is not known from the keys alone
            self.typed.reliable = False

    async def _cancel_line(self, cancel: bytes) -> bool:
        """Make the shell drop the refused line, and wait for its new prompt; False when
        the shell kept the line.

        Ctrl-C goes once the line's echo is drawn: a bash still busy drawing when SIGINT
        lands echoes ``^C`` and keeps the line. A shell that dropped the line moves to a new
        row; one that did not is sent Ctrl-C again (at most :data:`CANCEL_TRIES` in all)."""
        assert self.view is not None
        await self.view.settled(self._sent_at)
        for _ in range(CANCEL_TRIES):
            cancelled_at = self._clock()
            await self._forward(cancel)
            await self.view.settled(cancelled_at, CANCEL_SETTLE_MAX)
            if self.view.last_line_feed > cancelled_at:
                return True
            cancel = CANCEL_LINE
        return False

    async def _allowed(self, rule: CommandRule, line: str) -> None:
        kind = "command.alert" if rule.action is CommandAction.ALERT else "command.supervised"
        self.host.mark(f"{kind.split('.')[1]}: {shown(line)}")
        await self.host.audit(kind, channel="shell", command=shown(line), rule=rule.match,
                              action=rule.action.value, message=rule.message)
