"""The in-band commands a technician types after ``ssh TECH@broker``.

ssh joins its arguments with spaces and drops the local shell's quotes, so
``request pump-7 --for 45m --reason "Battery check"`` arrives as
``request pump-7 --for 45m --reason Battery check``. Everything after ``--reason`` is the
reason, as typed: no quoting needed, and an apostrophe in it is not a syntax error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_REASON = re.compile(r"(?:^|\s)--reason(?:=|\s+|\Z)")
_TRAILING_WAIT = re.compile(r"\s+--wait\s*\Z")
_QUOTES = ("\"", "'")


@dataclass(frozen=True)
class ReasonSplit:
    head: str  # the command line before --reason (parsed as words by the caller)
    reason: str | None  # everything after --reason, or None when there is no --reason
    wait: bool  # a --wait typed after the reason (the usage line shows it last)


def split_reason(command: str) -> ReasonSplit:
    """Split ``command`` at its first ``--reason``."""
    match = _REASON.search(command)
    if match is None:
        return ReasonSplit(command, None, False)
    head, reason = command[:match.start()], command[match.end():]
    wait = _TRAILING_WAIT.search(reason) is not None
    if wait:
        reason = _TRAILING_WAIT.sub("", reason)
    reason = reason.strip()
    if len(reason) >= 2 and reason[0] == reason[-1] and reason[0] in _QUOTES:
        reason = reason[1:-1]  # quoted twice (ssh host 'request ... --reason "x y"')
    return ReasonSplit(head, reason, wait)
