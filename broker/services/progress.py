"""How long work reports how far it got: the service says the total once, then each step.
The CLI shows a bar on a terminal (:mod:`broker.cli.progress`); everything else passes
:data:`SILENT`."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, total: int) -> None: ...

    def advance(self, step: int) -> None: ...


class _Silent:
    def start(self, total: int) -> None:
        return None

    def advance(self, step: int) -> None:
        return None


SILENT: Progress = _Silent()
