"""``broker api-token create|list|revoke``: bearer tokens for the REST API."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click

from broker.cli._base import actor, common, duration, emit, run, table
from broker.services.api_tokens import ApiTokens, Role, TokenView


def render(view: TokenView, now: datetime) -> dict[str, Any]:
    t = view.token
    return {"id": t.id, "name": t.name, "role": t.role, "approver": view.approver,
            "state": view.state(now), "created_at": t.created_at, "created_by": t.created_by,
            "expires_at": t.expires_at, "last_used_at": t.last_used_at,
            "revoked_at": t.revoked_at}


@click.group("api-token")
def api_token() -> None:
    """Bearer tokens for the REST API (/api/v1)."""


@api_token.command("create")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice([r.value for r in Role]),
              help="admin: everything; approver: decide as --approver; auditor: read only")
@click.option("--approver", default=None, metavar="NAME",
              help="the approver an approver token decides as (required for --role approver)")
@click.option("--expires", default=None, metavar="DURATION",
              help="lifetime, e.g. 90d (default: until revoked)")
@common()
def token_create(name: str, role: str, approver: str | None, expires: str | None,
                 config_file: str | None, as_json: bool) -> None:
    """Make a token. It is printed once and never stored: keep it now."""
    lifetime = duration("--expires", expires) if expires is not None else None
    view, secret = run(config_file, lambda ctx: ApiTokens(ctx, actor()).create(
        name, role, approver, lifetime))
    data = {**render(view, datetime.now(UTC)), "token": secret}
    until = f", expires {view.token.expires_at:%Y-%m-%d %H:%M:%SZ}" if view.token.expires_at \
        else ""
    emit(as_json, data, f"API token {name} ({role}{until}); shown only this once:\n{secret}")


@api_token.command("list")
@common()
def token_list(config_file: str | None, as_json: bool) -> None:
    """List tokens (never the tokens themselves)."""
    views = run(config_file, lambda ctx: ApiTokens(ctx, actor()).find())
    now = datetime.now(UTC)
    data = [render(v, now) for v in views]
    emit(as_json, data, lambda: table(
        [(d["name"], d["role"], d["approver"], d["state"], d["created_at"], d["expires_at"],
          d["last_used_at"]) for d in data],
        ["name", "role", "approver", "state", "created", "expires", "last used"]))


@api_token.command("revoke")
@click.argument("name")
@common()
def token_revoke(name: str, config_file: str | None, as_json: bool) -> None:
    """Revoke a token: it stops working at once."""
    view = run(config_file, lambda ctx: ApiTokens(ctx, actor()).revoke(name))
    emit(as_json, render(view, datetime.now(UTC)), f"API token {name} revoked")
