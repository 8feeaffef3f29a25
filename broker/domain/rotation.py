"""Device credential rotation, the pure part: methods, when a rotation falls due, the retry
schedule after a failure, recognising `passwd` prompts, and editing authorized_keys text."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from datetime import datetime, timedelta

FIRST_RETRY = timedelta(minutes=1)
LONGEST_RETRY = timedelta(hours=1)
# A grant that just ended still has sessions being cut (within a second): let them go first.
SETTLE = timedelta(seconds=5)
# How long one node may work a rotation before another node may take it over.
LEASE = timedelta(minutes=10)


class RotationError(ValueError):
    """A rotation setting that does not fit the device's credential."""


class RotationMethod(enum.StrEnum):
    CHPASSWD = "chpasswd"  # exec `chpasswd`, `user:new` on stdin (root-capable accounts)
    PASSWD = "passwd"  # interactive `passwd` on a PTY (unprivileged accounts)
    AUTHORIZED_KEY = "authorized_key"  # new key into ~/.ssh/authorized_keys, old key out


PASSWORD_METHODS = frozenset({RotationMethod.CHPASSWD, RotationMethod.PASSWD})


def parse_method(text: str) -> RotationMethod:
    try:
        return RotationMethod(text)
    except ValueError:
        names = ", ".join(m.value for m in RotationMethod)
        raise RotationError(f"{text!r} is not a rotation method (one of {names})") from None


def default_method(kind: str) -> RotationMethod:
    """The method a device gets when none is set: by the kind of its credential."""
    return RotationMethod.AUTHORIZED_KEY if kind == "key" else RotationMethod.CHPASSWD


def method_for(kind: str, configured: str | None) -> RotationMethod:
    """The method to use for a credential of ``kind`` (password | key)."""
    method = default_method(kind) if configured is None else parse_method(configured)
    if (kind == "key") != (method is RotationMethod.AUTHORIZED_KEY):
        raise RotationError(f"rotation method {method.value} does not fit a {kind} credential"
                            f" (use {default_method(kind).value}"
                            f"{' or passwd' if kind == 'password' else ''})")
    return method


def due_after_grant_end(now: datetime, already_due: datetime | None) -> datetime:
    """When a device's credential is to be rotated after one of its grants ended ``now``."""
    wanted = now + SETTLE
    return wanted if already_due is None else min(already_due, wanted)


def retry_delay(attempts: int) -> timedelta:
    """How long to wait after the ``attempts``-th failure in a row: 1 min doubling to 1 h."""
    if attempts < 1:
        raise ValueError(f"attempts counts failures and starts at 1, not {attempts}")
    doubled: timedelta = FIRST_RETRY * 2 ** min(attempts - 1, 16)
    return min(doubled, LONGEST_RETRY)


def lease_free(claimed_until: datetime | None, now: datetime) -> bool:
    """Does no node hold the device's rotation lease now (never taken, released, or run
    out)?"""
    return claimed_until is None or claimed_until <= now


def is_claimable(due_at: datetime | None, claimed_until: datetime | None, now: datetime) -> bool:
    """May a node start working this device's rotation now?"""
    return due_at is not None and due_at <= now and lease_free(claimed_until, now)


class Prompt(enum.Enum):
    CURRENT = "current"
    NEW = "new"
    RETYPE = "retype"


_PROMPTS = (  # checked in this order: "Retype new password" also says "new password"
    (Prompt.RETYPE, re.compile(r"(retype|re-?enter|again|confirm|repeat)[^\n:]*:\s*\Z", re.I)),
    (Prompt.CURRENT, re.compile(r"(current|old|\(current\)|existing)[^\n:]*password:\s*\Z"
                                r"|^\s*password:\s*\Z", re.I | re.M)),
    (Prompt.NEW, re.compile(r"new[^\n:]*password:\s*\Z", re.I)),
)


def classify_prompt(pending_output: str) -> Prompt | None:
    """Which answer `passwd` waits for, judged from the end of what it printed so far."""
    tail = pending_output[-200:]
    for prompt, pattern in _PROMPTS:
        if pattern.search(tail):
            return prompt
    return None


def key_blob(line: str) -> str | None:
    """The base64 key of an authorized_keys line (options and comment aside), or None."""
    fields = line.strip().split()
    for index, field in enumerate(fields):
        if (field.startswith(("ssh-", "ecdsa-", "sk-")) and index + 1 < len(fields)
                and fields[index + 1].startswith("AAAA")):
            return fields[index + 1]
    return None


def with_key_added(text: str, line: str) -> str:
    """authorized_keys ``text`` with ``line`` appended (once; the rest kept as it was)."""
    blob = key_blob(line)
    if blob is not None and blob in {key_blob(existing) for existing in text.splitlines()}:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return text + line.strip() + "\n"


def without_keys(text: str, blobs: Iterable[str]) -> str:
    """authorized_keys ``text`` without the lines holding any of ``blobs``."""
    drop = set(blobs)
    kept = [line for line in text.splitlines() if key_blob(line) not in drop]
    return "".join(line + "\n" for line in kept)
