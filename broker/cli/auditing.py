"""``broker audit ...`` and ``broker policy ...``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from broker.audit import ChainProblem
from broker.cli._base import common, config_of, emit, run, since
from broker.domain.policy import DeviceFacts, Policy, TechnicianFacts, default_policy_notice
from broker.domain.text import visible
from broker.errors import Refused, UsageError
from broker.policy import PolicyError, explain, explain_json, load_policies
from broker.services.audit_log import export_audit, newest_events
from broker.services.context import Context
from broker.services.policies import facts_of


@click.group("audit")
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@click.option("--checkpoints", "log_copy", metavar="FILE", default=None,
              type=click.Path(dir_okay=False, path_type=Path),
              help="JSON log lines kept outside the broker host (the SIEM copy): check the "
                   "database against the audit.checkpoint lines in it")
@common()
def audit_verify(log_copy: Path | None, config_file: str | None, as_json: bool) -> None:
    """Check every link of the audit chain and every signed checkpoint of its head."""
    from broker.audit import checks

    copies: list[Any] = []
    unreadable: list[checks.Finding] = []
    if log_copy is not None:
        try:
            with log_copy.open(encoding="utf-8", errors="replace") as stream:
                copies, unreadable = checks.parse_log_copy(stream, str(log_copy))
        except OSError as exc:
            raise UsageError(f"--checkpoints {log_copy}: {exc.strerror or exc}") from None

    async def body(ctx: Context) -> checks.AuditCheck:
        return await checks.check(ctx, copies if log_copy is not None else None,
                                       str(log_copy))

    result = run(config_file, body)
    problems: list[ChainProblem | checks.Finding] = [*unreadable, *result.problems]
    lines = [str(p) for p in problems] + [str(f) for f in result.notes]
    if not problems:
        lines.append(f"ok: {result.rows} audit rows, chain intact, {result.checkpoints} "
                     f"checkpoint{'' if result.checkpoints == 1 else 's'}")
    emit(as_json, {"ok": not problems, "rows": result.rows,
                   "checkpoints": result.checkpoints,
                   "problems": [{"seq": getattr(p, "seq", None), "message": p.message}
                                for p in problems],
                   "notes": [f.message for f in result.notes]},
         "\n".join(lines))
    if problems:
        raise Refused(f"audit log does not verify: {len(problems)} problem(s)")


@audit.command("export")
@click.option("--since", "since_text", default=None, metavar="TIME|DURATION",
              help="ISO 8601 time, or a duration such as 7d meaning that long ago")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl",
              help="JSON lines or CSV",
              show_default=True)
@common(json_output=False)
def audit_export(since_text: str | None, fmt: str, config_file: str | None) -> None:
    """Write audit rows to standard output."""

    async def body(ctx: Context) -> int:
        start = since("--since", since_text, ctx.now())
        return await export_audit(ctx, sys.stdout, fmt, start)

    run(config_file, body)


@audit.command("tail")
@click.option("-n", "count", type=click.IntRange(1, 100000), default=20, show_default=True,
              help="how many of the newest events")
@common()
def audit_tail(count: int, config_file: str | None, as_json: bool) -> None:
    """Show the newest audit rows."""

    async def body(ctx: Context) -> list[dict[str, Any]]:
        return await newest_events(ctx, count)

    rows = run(config_file, body)

    def human() -> None:
        for r in rows:
            data = json.dumps(r["data"], sort_keys=True) if r["data"] else ""
            click.echo(visible(f"{r['seq']:>6} {r['ts'][:19]}Z {r['kind']:<22}"
                               f" {r['actor']:<22} {r['subject'] or '-'} {data}".rstrip()))

    emit(as_json, rows, human)


@click.group("policy")
def policy() -> None:
    """Access policies (policies/*.yaml)."""


@policy.command("check")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@common()
def policy_check(directory: Path | None, config_file: str | None, as_json: bool) -> None:
    """Validate policy files; report every problem with file, line and field."""
    target = directory or config_of(config_file).policy_dir
    try:
        problems, default = [], not load_policies(target)
    except PolicyError as exc:
        problems, default = exc.problems, False
    notice = default_policy_notice(str(target)) if default else None
    emit(as_json, {"ok": not problems, "directory": str(target), "default_policy": default,
                   "problems": [{"file": p.file, "line": p.line, "field": p.field,
                                 "message": p.message} for p in problems]},
        lambda: click.echo("\n".join(str(p) for p in problems) if problems
                           else f"ok: {notice}" if notice
                           else f"ok: policies in {target} are valid"))
    if problems:
        raise Refused(f"{len(problems)} problem(s) in {target}")


@policy.command("explain")
@click.option("--tech", required=True, help="technician name")
@click.option("--device", "device_name", required=True, help="device name")
@common()
def policy_explain(tech: str, device_name: str, config_file: str | None, as_json: bool) -> None:
    """Say which policy applies to a technician and a device, and why."""

    async def body(ctx: Context) -> tuple[list[Policy], TechnicianFacts, DeviceFacts]:
        return (ctx.policies(), *await facts_of(ctx, tech, device_name))

    policies, tech_facts, device_facts = run(config_file, body)
    emit(as_json, explain_json(policies, tech_facts, device_facts),
         explain(policies, tech_facts, device_facts))
