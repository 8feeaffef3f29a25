"""SSH user names: ``TECH+DEVICE`` reaches a device, ``TECH`` alone reaches the broker's menu."""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")  # \Z: no trailing newline
MAX_USERNAME = 129


class UsernameError(ValueError):
    """An SSH user name that is not ``TECH`` or ``TECH+DEVICE``."""


@dataclass(frozen=True)
class Target:
    technician: str
    device: str | None


def check_name(kind: str, name: str) -> str:
    """Names of technicians, approvers and devices: ASCII letters, digits, ``.``, ``_``, ``-``."""
    if not NAME_PATTERN.match(name):
        raise UsernameError(
            f"{kind} name {_show(name)} is not valid: use 1-63 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


def parse_username(username: str) -> Target:
    if not username:
        raise UsernameError("empty user name: connect as TECH+DEVICE (or TECH to list grants)")
    if len(username) > MAX_USERNAME:
        raise UsernameError(
            f"user name is {len(username)} characters long: connect as TECH+DEVICE"
        )
    tech, plus, device = username.partition("+")
    check_name("technician", tech)
    if not plus:
        return Target(tech, None)
    if "+" in device:
        raise UsernameError(f"user name {_show(username)} has more than one '+': use TECH+DEVICE")
    return Target(tech, check_name("device", device))


def _show(text: str) -> str:
    """A user-supplied string made safe to echo back on one line."""
    shown = text if len(text) <= 40 else text[:40] + "..."
    return ascii(shown)  # quoted, with control and non-ASCII characters escaped once
