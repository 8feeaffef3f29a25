"""The guard between a technician's terminal and the device, in-process: a recording sink
stands for the device's stdin and a pyte screen is fed what a shell would echo."""

from __future__ import annotations

import asyncio
import time

import pytest

from broker.aio import within
from broker.domain.session_rules import CommandAction, CommandRule, SessionRules
from broker.services.supervision import Supervision
from broker.ssh import line_guard
from broker.ssh.line_guard import GuardedInput, tails
from broker.ssh.screen import SETTLE_QUIET, TerminalView
from broker.ssh.session_guard import may_start

RULES = SessionRules(commands=(
    CommandRule(r"^rm\s+-rf", CommandAction.DENY, "no recursive deletes"),
    CommandRule(r"alert-me", CommandAction.ALERT, "told"),
    CommandRule(r"needs-eyes", CommandAction.SUPERVISE, "a supervisor must watch"),
))


class Device:
    """The device's stdin, echoing like a shell in cooked mode onto the view."""

    def __init__(self, view: TerminalView | None, echo: bool = True) -> None:
        self.view, self.echo = view, echo
        self.received = b""

    async def send(self, data: bytes) -> None:
        self.received += data
        if self.view is not None and self.echo:
            self.view.output(data.replace(b"\r", b"\r\n").replace(b"\x03", b"^C\r\n$ "))
        elif self.view is not None and b"\x03" in data:  # a new prompt, echo or not
            self.view.output(b"\r\n$ ")

    async def send_eof(self) -> None:
        return None


class Host:
    def __init__(self) -> None:
        self.notices: list[str] = []
        self.marks: list[str] = []
        self.audits: list[tuple[str, dict[str, object]]] = []

    async def notice(self, text: str) -> None:
        self.notices.append(text)

    def mark(self, label: str) -> None:
        self.marks.append(label)

    async def audit(self, kind: str, **data: object) -> None:
        self.audits.append((kind, data))


def guard(rules: SessionRules = RULES, supervision: Supervision | None = None,
          echo: bool = True) -> tuple[GuardedInput, Device, Host, TerminalView]:
    view = TerminalView(80, 24)
    view.output(b"$ ")
    device, host = Device(view, echo), Host()
    return (GuardedInput(device, host, rules, supervision or Supervision(), view), device,
            host, view)


async def test_an_allowed_line_is_forwarded_with_its_enter() -> None:
    g, device, host, _ = guard()
    await g.send(b"ls -l\r")
    assert device.received == b"ls -l\r" and host.notices == [] and host.audits == []


async def test_a_denied_line_never_gets_its_enter_and_is_cancelled() -> None:
    g, device, host, _ = guard()
    await g.send(b"rm -rf /data\rls\r")  # what follows the refused line is dropped too
    assert device.received == b"rm -rf /data\x03"
    assert host.notices == ["refused by policy: no recursive deletes"]
    assert host.marks == ["command denied: rm -rf /data"]
    ((kind, data),) = host.audits
    assert kind == "command.denied" and data["command"] == "rm -rf /data"
    assert data["typed_line_known"] is True and data["channel"] == "shell"
    await g.send(b"ls\r")  # the next line is judged afresh
    assert device.received.endswith(b"ls\r")


async def test_editing_keys_are_followed_before_the_check() -> None:
    g, device, _, _ = guard()
    await g.send(b"rm -rx\x7ff /\r")
    assert b"\r" not in device.received  # "rm -rf /" after the Backspace
    g2, device2, _, _ = guard(echo=False)  # (a raw echo would leave it on the screen)
    await g2.send(b"rm -rf /x\x15ls\r")  # Ctrl-U removed it all
    assert device2.received.endswith(b"ls\r")


async def test_a_line_recalled_from_history_is_judged_by_the_screen() -> None:
    g, device, host, view = guard(echo=False)
    await g.send(b"\x1b[A")  # Up: the shell redraws the line from its history
    view.output(b"rm -rf /")
    await g.send(b"\r")
    assert not device.received.endswith(b"\r")
    assert host.audits[0][1]["typed_line_known"] is False
    assert host.audits[0][1]["command"] == "rm -rf /"


async def test_an_unknown_line_fails_closed_for_anchored_rules() -> None:
    g, device, _, view = guard(echo=False)
    await g.send(b"\x12")  # Ctrl-R
    view.output(b"\r(reverse-i-search)`rm': rm -rf /")
    await g.send(b"\r")
    assert not device.received.endswith(b"\r")  # "^rm" matched a tail of the shown line


async def test_a_bracketed_paste_is_checked_at_each_newline() -> None:
    g, device, host, _ = guard()
    await g.send(b"\x1b[200~echo one\rrm -rf /\r\x1b[201~")
    assert device.received == b"\x1b[200~echo one\rrm -rf /\x1b[201~\x03"
    assert host.marks == ["command denied: echo one\\nrm -rf /"]  # the shell's whole buffer


async def test_an_alert_line_runs_and_is_audited() -> None:
    g, device, host, _ = guard()
    await g.send(b"echo alert-me\r")
    assert device.received == b"echo alert-me\r"
    assert host.audits[0][0] == "command.alert" and host.marks == ["alert: echo alert-me"]


async def test_a_supervise_line_waits_for_a_supervisor(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    supervision = Supervision()
    g, device, host, _ = guard(supervision=supervision)
    sending = asyncio.ensure_future(g.send(b"echo needs-eyes\r"))
    await asyncio.sleep(0.3)
    assert not device.received.endswith(b"\r") and not sending.done()
    assert "needs a hospital supervisor watching" in host.notices[0]
    assert host.audits[0][0] == "session.supervision_wanted"
    await supervision.join("sue")
    await within(5, sending)
    assert device.received.endswith(b"\r")
    assert host.audits[-1][0] == "command.supervised"
    # and without a supervisor within the wait, the line is refused
    monkeypatch.setattr(line_guard, "SUPERVISE_WAIT", 0.2)
    g2, device2, host2, _ = guard(supervision=Supervision())
    await g2.send(b"echo needs-eyes\r")
    assert device2.received.endswith(b"\x03")
    assert host2.notices[-1] == ("refused by policy: a supervisor must watch (no supervisor"
                                 " joined in time)")


async def test_held_input_is_dropped_and_the_technician_told_once() -> None:
    supervision = Supervision(required=True)
    g, device, host, _ = guard(rules=SessionRules(supervision_required=True),
                               supervision=supervision)
    await g.send(b"ls\r")
    await g.send(b"pwd\r")
    assert device.received == b""
    assert host.notices == ["this session needs a hospital supervisor watching: what you"
                            " type is dropped until one joins"]
    await supervision.join("sue")
    await g.send(b"ls\r")
    assert device.received == b"ls\r"
    await supervision.pause("sue")
    await g.send(b"rm x\r")
    assert device.received == b"ls\r"
    assert host.notices[-1].startswith("input is paused by hospital supervisor sue")
    await supervision.resume("sue")
    await supervision.leave("sue")
    assert not supervision.input_open and supervision.paused_by is None


def test_tails_start_after_blanks_and_colons() -> None:
    assert tails("a b:c") == ["b:c", "c"]
    assert len(tails("x " * 500)) <= 200


def test_the_view_reads_the_line_from_the_prompt_and_follows_scrolling() -> None:
    view = TerminalView(20, 3)
    view.output(b"one\r\ntwo\r\n$ ")
    view.line_started()
    view.output(b"rm -rf /aaaaaaaaaaaaaaaaaaaaa")  # wraps onto the next row, scrolls
    assert view.shown()[0] == "rm -rf /aaaaaaaaaaaaaaaaaaaaa"
    view.line_done()
    view.output(b"\r\n$ ")
    assert view.shown() == ["$"]  # no start known: the cursor's row


class StartHost(Host):
    def __init__(self) -> None:
        super().__init__()
        self.refusals: list[str] = []

    async def refuse(self, message: str, reason: str, internal: str | None = None) -> None:
        self.refusals.append(message)


class Typing:
    async def receive(self) -> bytes:
        await asyncio.sleep(3600)
        return b""


async def test_exec_commands_are_checked_before_they_start() -> None:
    host, recorded = StartHost(), []
    assert not await may_start(host, "exec", "rm -rf /x", RULES, Supervision(), recorded.append)
    assert host.refusals == ["refused by policy: no recursive deletes"]
    assert recorded == ["command denied: no recursive deletes"]
    assert host.audits[0][0] == "command.denied" and host.audits[0][1]["channel"] == "exec"
    host = StartHost()
    assert await may_start(host, "exec", "echo alert-me", RULES, Supervision(), recorded.append)
    assert [k for k, _ in host.audits] == ["command.alert"] and host.refusals == []
    assert await may_start(StartHost(), "exec", "uptime", RULES, Supervision(), recorded.append)


async def test_an_exec_supervise_command_waits_or_is_refused() -> None:
    supervision, host = Supervision(), StartHost()
    starting = asyncio.ensure_future(may_start(host, "exec", "echo needs-eyes", RULES,
                                               supervision, lambda _label: None, wait=30))
    await asyncio.sleep(0.2)
    assert not starting.done()
    await supervision.join("sue")
    assert await within(5, starting)
    assert [k for k, _ in host.audits] == ["session.supervision_wanted", "command.supervised"]
    host = StartHost()
    assert not await may_start(host, "exec", "echo needs-eyes", RULES, Supervision(),
                               lambda _label: None, wait=0.2)
    assert host.refusals == ["refused by policy: a supervisor must watch (no supervisor joined"
                             " in time)"]


async def test_supervision_required_holds_shells_and_refuses_transfers() -> None:
    required = SessionRules(supervision_required=True)
    host = StartHost()
    assert not await may_start(host, "sftp", None, required, Supervision(True), print)
    assert host.refusals[0].startswith("file transfers are not available in a supervised")
    assert await may_start(StartHost(), "sftp", None, RULES, Supervision(), print)
    supervision, host = Supervision(True), StartHost()
    starting = asyncio.ensure_future(may_start(host, "shell", None, required, supervision,
                                               print, Typing(), wait=30))
    await asyncio.sleep(0.2)
    assert not starting.done()
    await supervision.join("sue")
    assert await within(5, starting)
    host = StartHost()
    assert not await may_start(host, "shell", None, required, Supervision(True), print,
                               Typing(), wait=0.2)
    assert host.refusals == ["no hospital supervisor joined in time; the session is closed"]


async def test_a_shell_without_a_terminal_is_refused_under_command_rules() -> None:
    host = StartHost()
    assert not await may_start(host, "shell", None, RULES, Supervision(), print, None)
    assert "a shell without a terminal is not available" in host.refusals[0]
    assert await may_start(StartHost(), "shell", None, RULES, Supervision(), print, Typing())


def test_a_flood_of_output_is_drawn_only_in_its_last_bytes() -> None:
    view = TerminalView(80, 24)
    started = time.monotonic()
    for _ in range(2000):  # 10 MB, as a `cat` of a large file sends it
        view.output(b"x" * 5000 + b"\r\n")
    view.output(b"$ ")
    view.line_started()
    assert time.monotonic() - started < 5  # drawing all of it would take a minute
    view.output(b"rm -rf /")
    assert view.shown() == ["rm -rf /"]
    view.output(b"y" * 20_000 + b"\r\n$ rm -rf /z")  # more than the limit since the start:
    assert view.shown() == ["$ rm -rf /z"]  # the start is forgotten, the whole row counts


async def test_after_ctrl_c_the_dropped_line_is_not_held_against_the_next() -> None:
    g, device, host, view = guard()
    await g.send(b"rm -rf /")
    await g.send(b"\x03")
    view.output(b"^C\r\n$ ")
    await g.send(b"ls\r")
    assert device.received.endswith(b"ls\r") and host.audits == []


async def test_a_session_cut_while_waiting_is_not_refused_a_second_time() -> None:
    supervision, host = Supervision(True), StartHost()
    starting = asyncio.ensure_future(may_start(host, "shell", None,
                                               SessionRules(supervision_required=True),
                                               supervision, print, Typing(), wait=30))
    await asyncio.sleep(0.2)
    supervision.close()  # the grant was revoked, or staff killed the session
    assert not await within(5, starting)
    assert host.refusals == []


class LateDevice(Device):
    """A shell on a loaded device: what it draws (the echo, the new prompt after Ctrl-C)
    reaches the terminal ``delay`` seconds after the input."""

    def __init__(self, view: TerminalView, delay: float) -> None:
        super().__init__(view)
        self.delay = delay

    async def send(self, data: bytes) -> None:
        self.received += data
        drawn = data.replace(b"\r", b"\r\n").replace(b"\x03", b"^C\r\n$ ")
        asyncio.get_running_loop().call_later(self.delay, self.view.output, drawn)


async def test_after_a_refusal_the_next_line_starts_at_the_new_prompt() -> None:
    view = TerminalView(80, 24)
    view.output(b"$ ")
    device, host = LateDevice(view, delay=0.3), Host()
    g = GuardedInput(device, host, RULES, Supervision(), view)
    await g.send(b"rm -rf /data\r")  # refused on the typed line, before any echo came back
    assert device.received == b"rm -rf /data\x03"
    await g.send(b"ls")  # the technician types on at once
    await asyncio.sleep(0.5)  # meanwhile the old line's echo and the new prompt are drawn
    await g.send(b"\r")
    # the line is "ls" on the new prompt, not the old echo followed by it
    assert device.received.endswith(b"ls\r"), device.received
    assert host.notices == ["refused by policy: no recursive deletes"]


class KeepingDevice(Device):
    """A bash that SIGINT reached while it was still drawing: it echoes ``^C`` and keeps
    the line for the first ``keeps`` Ctrl-Cs (the cursor returns to the row's start)."""

    def __init__(self, view: TerminalView, keeps: int) -> None:
        super().__init__(view)
        self.keeps = keeps

    async def send(self, data: bytes) -> None:
        self.received += data
        assert self.view is not None
        for char in data:
            if char == 3 and self.keeps > 0:
                self.keeps -= 1
                self.view.output(b"^C\r")
            elif char == 3:
                self.view.output(b"^C\r\n$ ")
            else:
                self.view.output(bytes([char]).replace(b"\r", b"\r\n"))


def keeping_guard(keeps: int) -> tuple[GuardedInput, KeepingDevice, Host, TerminalView]:
    view = TerminalView(80, 24)
    view.output(b"$ ")
    device, host = KeepingDevice(view, keeps), Host()
    return GuardedInput(device, host, RULES, Supervision(), view), device, host, view


async def test_a_shell_that_kept_the_refused_line_is_sent_ctrl_c_again() -> None:
    g, device, host, _ = keeping_guard(keeps=1)
    await g.send(b"rm -rf /data\r")
    assert device.received == b"rm -rf /data\x03\x03"
    await g.send(b"ls\r")
    assert device.received.endswith(b"\x03ls\r")
    assert host.notices == ["refused by policy: no recursive deletes"]
    assert [kind for kind, _ in host.audits] == ["command.denied"]


async def test_a_shell_that_keeps_the_line_has_the_next_one_judged_with_it() -> None:
    g, device, host, _ = keeping_guard(keeps=line_guard.CANCEL_TRIES)
    await g.send(b"rm -rf /data\r")
    assert device.received == b"rm -rf /data" + b"\x03" * line_guard.CANCEL_TRIES
    # the shell would run "rm -rf /datals": the typed "ls" alone must not pass
    await g.send(b"ls\r")
    assert not device.received.endswith(b"\r")
    assert host.notices == ["refused by policy: no recursive deletes"] * 2
    assert host.audits[1][1]["typed_line_known"] is False


async def test_ctrl_c_goes_after_the_refused_line_is_drawn() -> None:
    view = TerminalView(80, 24)
    view.output(b"$ ")
    device, host = LateDevice(view, delay=0.3), Host()
    drawn: list[tuple[float, bytes]] = []
    draw = view.output

    def output(data: bytes) -> None:
        drawn.append((time.monotonic(), data))
        draw(data)

    view.output = output  # type: ignore[method-assign]
    sent: list[tuple[float, bytes]] = []
    send = device.send

    async def timed_send(data: bytes) -> None:
        sent.append((time.monotonic(), data))
        await send(data)

    device.send = timed_send  # type: ignore[method-assign]
    g = GuardedInput(device, host, RULES, Supervision(), view)
    await g.send(b"rm -rf /data")
    await g.send(b"\r")
    echo_drawn = next(at for at, data in drawn if b"rm -rf /data" in data)
    cancel_sent = next(at for at, data in sent if data == b"\x03")
    assert cancel_sent >= echo_drawn + SETTLE_QUIET * 0.9
