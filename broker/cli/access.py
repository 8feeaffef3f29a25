"""``broker request ...`` and ``broker grant ...``."""

from __future__ import annotations

from datetime import timedelta

import click

from broker.cli._base import (
    actor,
    common,
    duration,
    emit,
    fields,
    protocols,
    run,
    table,
    timestamp,
)
from broker.domain.durations import format_duration
from broker.domain.requests import RequestState
from broker.errors import UsageError
from broker.services import breakglass, render
from broker.services.grants import Grants
from broker.services.requests import Decision, Requests

REQUEST_STATES = [s.value for s in RequestState]


@click.group("request")
def request() -> None:
    """Access requests and decisions."""


@request.command("create")
@click.option("--tech", required=True, help="technician name")
@click.option("--device", "device_name", required=True, help="device name")
@click.option("--for", "for_", required=True, metavar="DURATION", help="e.g. 90m, 2h")
@click.option("--reason", required=True, help="why the technician needs access")
@click.option("--start", default=None, metavar="ISO8601", help="earliest start")
@click.option("--protocols", "protocol_list", default=None, metavar="LIST",
              help="ssh,sftp,scp,forward,web (default: what the policy allows)")
@common()
def request_create(tech: str, device_name: str, for_: str, reason: str, start: str | None,
                   protocol_list: str | None, config_file: str | None, as_json: bool) -> None:
    """File an access request."""
    length = duration("--for", for_)
    begin = timestamp("--start", start)
    wanted = protocols(protocol_list)
    created = run(config_file, lambda ctx: Requests(ctx, actor()).create(
        tech, device_name, length, reason, begin, wanted))
    view = run(config_file, lambda ctx: Requests(ctx, actor()).show(created.id or 0))
    emit(as_json, render.request(view),
         f"request {created.id} filed: {tech} on {device_name} for {format_duration(length)}"
         f" ({','.join(created.protocols)}); waiting for approval under policy {created.policy}")


@request.command("list")
@click.option("--state", type=click.Choice(REQUEST_STATES), default=None,
              help="only requests in this state")
@common()
def request_list(state: str | None, config_file: str | None, as_json: bool) -> None:
    """List requests."""
    data = [render.request(v) for v in run(config_file,
                                           lambda ctx: Requests(ctx, actor()).find(state))]
    emit(as_json, data, lambda: table(
        [(d["id"], d["state"], d["technician"], d["device"],
          format_duration_s(d["duration_s"]), d["created_at"], d["reason"][:40])
         for d in data],
        ["id", "state", "technician", "device", "for", "created", "reason"]))


def format_duration_s(seconds: int) -> str:
    return format_duration(timedelta(seconds=seconds))


@request.command("show")
@click.argument("ident", metavar="ID", type=int)
@common()
def request_show(ident: int, config_file: str | None, as_json: bool) -> None:
    """Show a request and its decisions."""
    d = render.request(run(config_file, lambda ctx: Requests(ctx, actor()).show(ident)))
    emit(as_json, d, lambda: fields(
        [("request", d["id"]), ("state", d["state"]),
         ("technician", f"{d['technician']} ({d['vendor']})"), ("device", d["device"]),
         ("reason", d["reason"]), ("duration", format_duration_s(d["duration_s"])),
         ("start", d["requested_start"] or "on approval"), ("protocols", d["protocols"]),
         ("policy", d["policy"]), ("created", d["created_at"]),
         ("approve by", d["expires_at"]), ("grant", d["grant"])]
        + [("decision", f"{x['decision']} by {x['approver']} via {x['via']}"
                        + (f": {x['comment']}" if x["comment"] else ""))
           for x in d["decisions"]]))


@request.command("cancel")
@click.argument("ident", metavar="ID", type=int)
@common()
def request_cancel(ident: int, config_file: str | None, as_json: bool) -> None:
    """Cancel a pending request."""
    run(config_file, lambda ctx: Requests(ctx, actor()).cancel(ident))
    emit(as_json, {"id": ident, "state": "cancelled"}, f"request {ident} cancelled")


def _decide(ident: int, as_: str, comment: str | None, approve: bool, config_file: str | None,
            as_json: bool) -> None:
    if comment is not None and len(comment) > 2000:
        raise UsageError("--comment is longer than 2000 characters")
    result: Decision = run(config_file, lambda ctx: Requests(ctx, f"approver:{as_}").decide(
        ident, as_, approve, comment, via="cli"))
    data = {"request": ident, "state": result.request.state,
            "grant": result.grant.id if result.grant else None,
            "still_needed": list(result.still_needed)}
    if not approve:
        text = f"request {ident} denied"
    elif result.grant:
        g = result.grant
        text = (f"request {ident} approved: grant {g.id} open from {g.start:%Y-%m-%d %H:%M:%SZ}"
                f" until {g.end:%Y-%m-%d %H:%M:%SZ}")
    else:
        text = f"approval recorded; still needed: {'; '.join(result.still_needed)}"
    emit(as_json, data, text)


@request.command("approve")
@click.argument("ident", metavar="ID", type=int)
@click.option("--as", "as_", required=True, metavar="APPROVER", help="the approver deciding")
@click.option("--comment", default=None, help="a note kept with the decision")
@common()
def request_approve(ident: int, as_: str, comment: str | None, config_file: str | None,
                    as_json: bool) -> None:
    """Approve a request, as an approver working from a shell."""
    _decide(ident, as_, comment, True, config_file, as_json)


@request.command("deny")
@click.argument("ident", metavar="ID", type=int)
@click.option("--as", "as_", required=True, metavar="APPROVER", help="the approver deciding")
@click.option("--comment", default=None, help="a note kept with the decision")
@common()
def request_deny(ident: int, as_: str, comment: str | None, config_file: str | None,
                 as_json: bool) -> None:
    """Deny a request."""
    _decide(ident, as_, comment, False, config_file, as_json)


@click.group("grant")
def grant() -> None:
    """Time-bound grants."""


@grant.command("list")
@click.option("--active", is_flag=True, help="only grants open now")
@click.option("--unreviewed", is_flag=True, help="only break-glass grants awaiting review")
@common()
def grant_list(active: bool, unreviewed: bool, config_file: str | None, as_json: bool) -> None:
    """List grants."""
    data = [render.grant(r) for r in run(config_file, lambda ctx: Grants(ctx, actor()).find(
        active, unreviewed))]
    emit(as_json, data, lambda: table(
        [(d["id"], d["state"], d["technician"], d["device"], d["protocols"], d["start"],
          d["end"], render.breakglass_mark(d)) for d in data],
        ["id", "state", "technician", "device", "protocols", "start", "end", "approval"]))


@grant.command("show")
@click.argument("ident", metavar="ID", type=int)
@common()
def grant_show(ident: int, config_file: str | None, as_json: bool) -> None:
    """Show a grant."""
    d = render.grant(run(config_file, lambda ctx: Grants(ctx, actor()).show(ident)))
    emit(as_json, d, lambda: fields(
        [("grant", d["id"]), ("state", d["state"]),
         ("technician", f"{d['technician']} ({d['vendor']})"), ("device", d["device"]),
         ("protocols", d["protocols"]), ("start", d["start"]), ("end", d["end"]),
         ("request", d["request"]), ("break-glass", d["breakglass"])]
        + render.breakglass_fields(d)
        + ([("revoked", f"{d['revoked_at']:%Y-%m-%d %H:%M:%SZ}: {d['revoke_reason']}")]
           if d["revoked_at"] else [])))


@grant.command("revoke")
@click.argument("ident", metavar="ID", type=int)
@click.option("--reason", default=None, help="why; shown to the technician and audited")
@common()
def grant_revoke(ident: int, reason: str | None, config_file: str | None, as_json: bool) -> None:
    """Revoke a grant now: live sessions are cut, new connections refused."""
    row = run(config_file, lambda ctx: Grants(ctx, actor()).revoke(ident, reason))
    emit(as_json, {"id": row.id, "state": row.state, "reason": row.revoke_reason},
         f"grant {ident} revoked")


@grant.command("review")
@click.argument("ident", metavar="ID", type=int)
@click.option("--as", "as_", required=True, metavar="APPROVER", help="the approver reviewing")
@click.option("--comment", required=True, help="what the review found")
@common()
def grant_review(ident: int, as_: str, comment: str, config_file: str | None,
                 as_json: bool) -> None:
    """Close the review of a break-glass grant, as an approver."""
    row = run(config_file, lambda ctx: breakglass.review(ctx, ident, as_, comment))
    emit(as_json, {"id": row.id, "reviewed_by": row.reviewed_by, "reviewed_at": row.reviewed_at,
                   "review_comment": row.review_comment, "review": "done"},
         f"break-glass grant {ident} reviewed by {row.reviewed_by}")
