"""The free-text rule (:mod:`broker.domain.text`) applied where every channel passes through.

Services call :func:`free_text` on each reason, comment or description they are given, before
anything is stored. A refusal is :class:`~broker.errors.BadText` (a usage error naming the
field: exit 2 on the CLI, 400 with ``field`` on the API, the form's message on the web, the
menu's answer over SSH) and an ``input.refused`` audit event.
"""

from __future__ import annotations

from typing import overload

from broker.domain.identity import AddressError, check_address
from broker.domain.text import TextError, TextKind, check_kind, visible
from broker.errors import BadText
from broker.services.context import Context

SAMPLE = 200  # characters of the refused text kept in the audit event (escaped)


@overload
async def free_text(ctx: Context, actor: str, subject: str | None, kind: TextKind,
                    value: str) -> str: ...
@overload
async def free_text(ctx: Context, actor: str, subject: str | None, kind: TextKind,
                    value: None) -> None: ...
async def free_text(ctx: Context, actor: str, subject: str | None, kind: TextKind,
                    value: str | None) -> str | None:
    """``value`` checked and stripped (None stays None), or BadText after auditing."""
    if value is None:
        return None
    try:
        return check_kind(kind, value)
    except TextError as exc:
        await refuse_input(ctx, actor, subject, exc.field, str(exc), value)
        raise BadText(str(exc), exc.field) from None


async def address(ctx: Context, actor: str, subject: str | None, field: str,
                  value: str) -> str:
    try:
        return check_address(field, value)
    except AddressError as exc:
        await refuse_input(ctx, actor, subject, field, str(exc), value)
        raise BadText(str(exc), field) from None


async def refuse_input(ctx: Context, actor: str, subject: str | None, field: str,
                       refusal: str, value: str) -> None:
    async with ctx.store.session() as db:
        await ctx.audit(db, "input.refused", actor[:200], subject[:200] if subject else None,
                        field=field, refusal=refusal, length=len(value),
                        sample=visible(value[:SAMPLE]))
