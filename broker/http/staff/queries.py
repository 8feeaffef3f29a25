"""What the staff pages read: the audit chain's verify state, recorded sessions on disk."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from broker.audit.chain import ChainProblem
from broker.audit.checks import Finding, check
from broker.recording.reader import SessionInfo, iter_sessions
from broker.services.context import Context

SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class ChainState:
    rows: int
    problems: list[ChainProblem | Finding]

    @property
    def ok(self) -> bool:
        return not self.problems


async def chain_state(ctx: Context) -> ChainState:
    """Every link of the audit chain checked, now (never cached: an auditor must see a
    tampered row the moment it is tampered with)."""
    result = await check(ctx)
    return ChainState(result.rows, result.problems)


def recorded_sessions(root: Path) -> list[SessionInfo]:
    """Every recorded session, newest first."""
    return sorted(iter_sessions(root), key=lambda s: s.path.name, reverse=True)


def recorded_session(root: Path, session_id: str) -> SessionInfo | None:
    if not SESSION_ID.fullmatch(session_id) or not root.is_dir():
        return None
    for info in iter_sessions(root):
        if info.session_id == session_id:
            return info
    return None
