"""A channel under its policy's session rules: what happens before it starts, and the guard
around its input (see :mod:`broker.ssh.line_guard`).

Before the device sees anything:

* SFTP and scp channels in a session under ``supervision: required`` are refused (a
  supervisor watches a terminal; file transfers are not shown there). Command rules do not
  apply to them.
* An exec command (``ssh host -- CMD``) is checked against the command rules: ``deny`` refuses
  it with the rule's message, ``alert`` lets it run and tells approvers, ``supervise`` holds
  it until a supervisor watches.
* A shell without a terminal (``ssh -T``) under command rules is refused: its lines have no
  echo and no editing to judge them by.
* Shells and exec commands under ``supervision: required`` wait until a supervisor joins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from broker.domain.session_rules import CommandAction, SessionRules, first_match
from broker.services.supervision import Supervision
from broker.ssh.line_guard import (
    GuardedInput,
    GuardHost,
    shown,
    wait_for_supervisor,
)
from broker.ssh.screen import TerminalView
from broker.ssh.streams import ReceiveStream, SendStream


class StartHost(GuardHost, Protocol):
    async def refuse(self, message: str, reason: str, internal: str | None = None) -> None: ...


async def may_start(host: StartHost, kind: str, command: str | None, rules: SessionRules,
                    supervision: Supervision, record_refusal: Callable[[str], None],
                    terminal_input: ReceiveStream | None = None,
                    wait: float | None = None) -> bool:
    """Whether the channel may start; when not, the technician has been told and the
    refusal audited. ``record_refusal`` writes a refused exec command to the recording;
    ``terminal_input`` (a terminal's input, never an exec's stdin, which is held instead)
    is dropped while the session waits for a supervisor."""
    if kind in ("sftp", "scp"):
        if rules.supervision_required:
            await host.refuse("file transfers are not available in a supervised session (a"
                              " supervisor watches the terminal); use the shell", "supervision")
            return False
        return True
    if kind == "shell" and terminal_input is None and rules.commands:
        # no terminal: no line editing and no echo to judge lines by; fail closed
        await host.refuse("a shell without a terminal is not available under this policy's"
                          " command rules; use ssh -t, or give the command to run",
                          "command-rule")
        return False
    if kind == "exec" and command is not None:
        rule = first_match(rules.commands, command)
        if rule is not None and rule.action is CommandAction.DENY:
            record_refusal(f"command denied: {rule.message}")
            await host.audit("command.denied", channel="exec", command=shown(command),
                             rule=rule.match, action=rule.action.value, message=rule.message)
            await host.refuse(f"refused by policy: {rule.message}", "command-rule")
            return False
        if rule is not None and rule.action is CommandAction.ALERT:
            await host.audit("command.alert", channel="exec", command=shown(command),
                             rule=rule.match, action=rule.action.value, message=rule.message)
        if rule is not None and rule.action is CommandAction.SUPERVISE:
            if not await wait_for_supervisor(host, supervision, "this command", wait):
                if supervision.closed:
                    return False
                record_refusal("command refused: no supervisor joined in time")
                await host.audit("command.denied", channel="exec", command=shown(command),
                                 rule=rule.match, action=rule.action.value,
                                 message=rule.message, why="no supervisor joined in time")
                await host.refuse(f"refused by policy: {rule.message} (no supervisor joined"
                                  " in time)", "command-rule")
                return False
            await host.audit("command.supervised", channel="exec", command=shown(command),
                             rule=rule.match, action=rule.action.value, message=rule.message)
    if rules.supervision_required and not await wait_for_supervisor(
            host, supervision, "this session", wait, terminal_input):
        if supervision.closed:
            return False  # the session was cut meanwhile: its own notice said why
        await host.refuse("no hospital supervisor joined in time; the session is closed",
                          "supervision")
        return False
    return True


def guard_input(sink: SendStream, host: GuardHost, rules: SessionRules,
                supervision: Supervision, shell: bool, width: int, height: int
                ) -> tuple[SendStream, TerminalView | None]:
    """The guarded sink to the device, and the terminal view the device's output must feed
    (a terminal under command rules; None otherwise)."""
    view = TerminalView(width or 80, height or 24) if shell and rules.commands else None
    return GuardedInput(sink, host, rules, supervision, view), view


def shown_to(view: TerminalView, tap: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """``tap``, also drawing the output on ``view``."""
    def both(data: bytes) -> None:
        view.output(data)
        tap(data)
    return both


def resized_to(view: TerminalView, tap: Callable[[int, int], None]
               ) -> Callable[[int, int], None]:
    def both(width: int, height: int) -> None:
        view.resize(width, height)
        tap(width, height)
    return both
