"""What ``broker device rotate|retire|show`` print about credential rotation."""

from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

from broker.cli._base import actor, emit, run, stderr_line
from broker.credentials.rotation import Outcome, rotate_on_demand
from broker.store.models import Device


def rotate_command(name: str, config_file: str | None, as_json: bool) -> None:
    """Exit 0 with one line when the credential was rotated, 1 with one line if not."""
    outcome = run(config_file, lambda ctx: rotate_on_demand(ctx, name, actor()))
    if outcome.ok:
        emit(as_json, outcome_json(outcome), outcome.detail)
        return
    if as_json:
        emit(True, outcome_json(outcome))
    stderr_line(outcome.detail)
    sys.exit(1)


def outcome_json(outcome: Outcome | None) -> dict[str, Any] | None:
    return None if outcome is None else asdict(outcome)


def retire_note(row: Device, outcome: Outcome | None) -> str:
    if outcome is None and not row.rotate:
        return "its secrets are deleted from the vault (not rotated: it is not marked rotate)"
    if outcome is None:
        return "its final credential rotation is under way on another node"
    if outcome.ok:
        return "final credential rotation done; its secrets are deleted from the vault"
    return (f"the final credential rotation FAILED ({outcome.detail}); its secrets stay in"
            " the vault until a retry succeeds")


def rotation_fields(d: dict[str, Any]) -> list[tuple[str, Any]]:
    due = d["rotation_due_at"]
    pending = "-" if due is None else f"due {due:%Y-%m-%d %H:%M:%SZ}" + (
        f" (after {d['rotation_attempts']} failed attempts)" if d["rotation_attempts"] else "")
    return [("rotate method", d["rotate_method"] or "default for its credential"),
            ("last rotated", d["rotated_at"]), ("rotation", pending)]


