"""``broker request link ID --approver NAME``: a fresh personal approval link (audited)."""

from __future__ import annotations

import click

from broker.approvals.links import IssuedLink, issue_link, web_secret
from broker.cli._base import actor, common, emit, run
from broker.cli.access import request


@request.command("link")
@click.argument("ident", metavar="ID", type=int)
@click.option("--approver", "approver_name", required=True, metavar="NAME",
              help="the approver the link is for")
@common()
def request_link(ident: int, approver_name: str, config_file: str | None,
                 as_json: bool) -> None:
    """Print a fresh approval URL for one approver (single-use, short-lived)."""
    link: IssuedLink = run(config_file, lambda ctx: issue_link(
        ctx, web_secret(ctx.config), ident, approver_name, actor(), via="cli"))
    emit(as_json, {"request": ident, "approver": link.claims.approver, "url": link.url,
                   "expires_at": link.claims.expires_at}, link.url)
