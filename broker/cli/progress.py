"""Progress for long work (backup, restore, verify, export): click's progress bar on stderr
when that is a terminal; nothing when it is a pipe or a file, or with ``--json``."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import click

from broker.services.progress import SILENT, Progress


class TerminalBar:
    def __init__(self, label: str, show_count: bool) -> None:
        self.label, self.show_count = label, show_count
        self._bar: Any = None

    def start(self, total: int) -> None:
        if total > 0 and self._bar is None:
            self._bar = click.progressbar(length=total, label=self.label, file=sys.stderr,
                                          show_eta=True, show_percent=True,
                                          show_pos=self.show_count, width=30)
            self._bar.__enter__()

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


@contextlib.contextmanager
def progress(label: str, *, as_json: bool = False, count: bool = False) -> Iterator[Progress]:
    """``with progress("backing up") as bar: service(..., progress=bar)``; ``count`` shows
    "12/50" (items) where the steps are items rather than bytes."""
    if as_json or not sys.stderr.isatty():
        yield SILENT
        return
    bar = TerminalBar(label, count)
    try:
        yield bar
    finally:
        bar.close()
