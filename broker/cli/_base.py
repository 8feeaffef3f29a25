"""Shared CLI plumbing: --config/--json on every command, running services, printing results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click

from broker.audit.checkpoints import checkpoint_if_written
from broker.audit.logging import log_to_file
from broker.config import Config, config_path, load_config
from broker.domain.durations import DurationError, parse_duration
from broker.domain.protocols import Protocol, ProtocolError, parse_protocols
from broker.domain.text import visible
from broker.errors import UsageError
from broker.services.context import Context, default_actor

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def common(json_output: bool = True) -> Callable[[F], F]:
    """Give a command the contract's ``--config PATH`` (and ``--json``) options."""

    def decorate(func: F) -> F:
        func = click.option("--config", "config_file", metavar="PATH", default=None,
                            help="broker.toml to use (default ./broker.toml or $BROKER_CONFIG)"
                            )(func)
        if json_output:
            func = click.option("--json", "as_json", is_flag=True,
                                help="print machine-readable JSON")(func)
        return func

    return decorate


def config_of(config_file: str | None) -> Config:
    parent = click.get_current_context().find_root().params.get("config_file")
    config = load_config(config_path(config_file or parent))
    with contextlib.suppress(OSError):
        log_to_file(config.log_file, config.settings.log.level)
    return config


def run(config_file: str | None, body: Callable[[Context], Awaitable[T]]) -> T:
    config = config_of(config_file)

    async def main() -> T:
        ctx = Context.open(config)
        try:
            await ctx.store.check_migrated()
            return await body(ctx)
        finally:
            try:
                await checkpoint_if_written(ctx)  # no unsigned tail left behind
            finally:
                await ctx.close()

    return asyncio.run(main())


def actor() -> str:
    return default_actor()


def emit(as_json: bool, data: Any, human: Callable[[], None] | str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=_json_default))
    elif callable(human):
        human()
    elif human is not None:
        click.echo(human)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    """One value as text for the terminal: stored free text may hold control characters
    (rows older than the text rule), which are shown escaped (``\\x1b``), never sent raw."""
    return visible(_plain(value))


def _plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def fields(pairs: Sequence[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs)
    for key, value in pairs:
        click.echo(f"{key + ':':<{width + 1}} {_cell(value)}")


def duration(option: str, text: str) -> Any:
    try:
        return parse_duration(text)
    except DurationError as exc:
        raise UsageError(f"{option}: {exc}") from None


def protocols(text: str | None) -> frozenset[Protocol] | None:
    if text is None:
        return None
    try:
        return parse_protocols(text)
    except ProtocolError as exc:
        raise UsageError(f"--protocols: {exc}") from None


def timestamp(option: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option}: {text!r} is not an ISO 8601 time "
                         "(e.g. 2026-11-24T14:00:00+01:00)") from None


def since(option: str, text: str | None, now: datetime) -> datetime | None:
    """``--since`` takes an ISO 8601 time or a duration meaning 'that long ago'."""
    if text is None:
        return None
    try:
        return now - parse_duration(text)
    except DurationError:
        moment = timestamp(option, text)
        if moment is not None and moment.tzinfo is None:
            raise UsageError(f"{option}: {text!r} needs a timezone (e.g. ...Z or +01:00)"
                             ) from None
        return moment


def stderr_line(message: str) -> None:
    sys.stderr.write(f"broker: {message}\n")
