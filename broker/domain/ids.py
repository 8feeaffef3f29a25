"""IDs as people type them: a unique prefix of a session ID is enough."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

T = TypeVar("T")
SHOWN_CANDIDATES = 5


class IdError(ValueError):
    """No match, or more than one."""


def by_prefix(typed: str, items: Iterable[tuple[str, T]], what: str) -> T:
    """The item whose ID is ``typed`` exactly, or the only one whose ID starts with it (an
    item may come under several IDs: it is one candidate however many of them match)."""
    typed = typed.strip()
    if not typed:
        raise IdError(f"an empty {what} ID")
    candidates: list[tuple[str, T]] = []
    for ident, item in items:
        if ident == typed:
            return item
        if ident.startswith(typed) and all(item is not seen for _, seen in candidates):
            candidates.append((ident, item))
    if not candidates:
        raise IdError(f"no {what} {typed!r}")
    if len(candidates) > 1:
        raise IdError(f"{what} ID {typed!r} is ambiguous: it starts "
                      f"{_some([ident for ident, _ in candidates])}; type more of it")
    return candidates[0][1]


def _some(idents: Sequence[str]) -> str:
    shown = ", ".join(sorted(idents)[:SHOWN_CANDIDATES])
    more = len(idents) - SHOWN_CANDIDATES
    return shown + (f" and {more} more" if more > 0 else "")
