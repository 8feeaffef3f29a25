"""What a policy demands of a live session: command rules and supervision.

A command rule is a regular expression searched for in a command line (an exec request's
command, or a line the technician submits in a shell, as the terminal shows it), an action and
a message. The first rule whose expression matches wins.

Expressions are RE2 (google-re2): matching takes time linear in the line's length whatever
the expression, so no rule can be made to backtrack catastrophically by a technician's input.
RE2 has no back-references or look-around; an expression using them is refused when the
policy is loaded, as is one whose compiled program would be too large.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import re2

MAX_PATTERN = 1000  # characters of one expression
MAX_MESSAGE = 200  # characters of a rule's message (shown on one line)
_RE2_MEMORY = 1 << 20  # bytes RE2 may use for one compiled expression


class CommandAction(StrEnum):
    DENY = "deny"  # never reaches the device
    ALERT = "alert"  # goes through; audited and approvers are told
    SUPERVISE = "supervise"  # held until a hospital supervisor watches the session


def _options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error comes back as one line, not on stderr
    options.max_mem = _RE2_MEMORY
    return options


def compile_pattern(pattern: str) -> Any:
    """The compiled expression, or ValueError with one line saying what is wrong."""
    if not pattern.strip():
        raise ValueError("the expression must not be empty")
    if len(pattern) > MAX_PATTERN:
        raise ValueError(f"the expression is longer than {MAX_PATTERN} characters")
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise ValueError(f"not a valid RE2 expression ({detail}); back-references and"
                         " look-around are not supported") from None


@dataclass(frozen=True)
class CommandRule:
    match: str
    action: CommandAction
    message: str
    line: int = 0  # where the rule is in its policy file (0: not from a file)
    compiled: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.compiled is None:
            object.__setattr__(self, "compiled", compile_pattern(self.match))

    def matches(self, command: str) -> bool:
        return self.compiled.search(command) is not None

    def describe(self) -> str:
        return f"{self.action.value} /{self.match}/: {self.message}"


@dataclass(frozen=True)
class SessionRules:
    commands: tuple[CommandRule, ...] = ()
    supervision_required: bool = False

    @property
    def guarded(self) -> bool:
        """Whether sessions under these rules need the broker to look at their input."""
        return bool(self.commands) or self.supervision_required


NO_SESSION_RULES = SessionRules()


def first_match(rules: Iterable[CommandRule], *candidates: str) -> CommandRule | None:
    """The first rule (in policy order) that matches any of ``candidates``.

    Each candidate is the same command as seen a different way (typed, or shown on the
    screen); checking them all fails closed. Leading and trailing blanks are ignored.
    """
    lines = [c.strip() for c in candidates if c.strip()]
    for rule in rules:
        if any(rule.matches(line) for line in lines):
            return rule
    return None
