"""``broker session ...``: live sessions on every node, and cutting one from anywhere."""

from __future__ import annotations

from typing import Any

import click

from broker.cli._base import actor, common, emit, run, table
from broker.services.sessions import LiveSessionView, kill_session, live_session_views


@click.group("session")
def session() -> None:
    """Live sessions, on every node of the cluster."""


def _view(view: LiveSessionView) -> dict[str, Any]:
    row = view.session
    return {"id": row.id, "technician": view.technician, "device": view.device,
            "grant": row.grant_id, "node": row.node, "client": row.client_addr,
            "started_at": row.started_at, "state": row.state,
            "kill_requested": row.kill_reason is not None}


@session.command("list")
@common()
def session_list(config_file: str | None, as_json: bool) -> None:
    """List live sessions and the node holding each."""
    views = [_view(v) for v in run(config_file, live_session_views)]
    emit(as_json, views, lambda: table(
        [[v["id"], v["technician"], v["device"], v["grant"], v["node"], v["client"],
          v["started_at"]] for v in views],
        ["id", "technician", "device", "grant", "node", "client", "started"]))


@session.command("kill")
@click.argument("session_id", metavar="ID")
@click.option("--reason", default="an operator ended this session", show_default=True,
              help="shown to the technician and audited")
@common()
def session_kill(session_id: str, reason: str, config_file: str | None, as_json: bool) -> None:
    """Cut a live session, whichever node holds it (within a second)."""
    row = run(config_file, lambda ctx: kill_session(ctx, session_id, actor(), reason))
    emit(as_json, {"id": row.id, "node": row.node, "kill_requested": True},
         f"session {row.id} on {row.node}: cut requested ({reason})")
