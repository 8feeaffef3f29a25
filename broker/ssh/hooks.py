"""What asyncssh offers no callback for, wrapped on each connection; and small helpers for
its synchronous callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any
from typing import Protocol as TypingProtocol

import asyncssh


class KeyCheckOwner(TypingProtocol):
    async def certificate_allowed(self, key_data: bytes) -> bool: ...

    def key_validated(self, valid: bool, signed: bool) -> bool: ...

    def failed_attempt(self) -> None: ...


class ForwardingOwner(TypingProtocol):
    def forwarding_refused(self, what: str) -> None: ...


_tasks: set[asyncio.Future[object]] = set()


def background(work: Coroutine[object, object, object]) -> None:
    """Run ``work`` from a synchronous asyncssh callback, keeping a reference until done."""
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def settle(timeout: float) -> None:
    """Wait up to ``timeout`` seconds for the work :func:`background` started (a closed
    connection's session close and its audit row), so that a stopping server writes its
    last checkpoint after them."""
    if _tasks:
        await asyncio.wait(list(_tasks), timeout=timeout)


def wrap_key_validation(conn: asyncssh.SSHServerConnection, owner: KeyCheckOwner) -> None:
    """Let the owner see the outcome of each key check, signature included, and veto it.

    asyncssh has no "partial success": publickey AND keyboard-interactive is built by
    refusing a proven key (remembered by the owner) and then offering keyboard-interactive.
    The signature check lives in the connection's own ``validate_public_key``, so it is
    wrapped on this instance.
    """
    original = conn.validate_public_key

    checked: dict[bytes, bool] = {}  # a key is offered unsigned, then signed: check it once

    async def validate(username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        if key_data not in checked:
            checked[key_data] = await owner.certificate_allowed(key_data)
        if not checked[key_data]:
            owner.failed_attempt()
            return False
        valid = await original(username, key_data, msg, signature)
        return owner.key_validated(valid, signed=bool(msg))

    conn.validate_public_key = validate  # type: ignore[method-assign]


def wrap_forwarding_requests(conn: asyncssh.SSHServerConnection,
                             owner: ForwardingOwner) -> None:
    """Audit agent and X11 forwarding requests. The listener runs with both off, so asyncssh
    refuses them; it offers no callback, so its two entry points are wrapped here."""
    async def create_agent_listener() -> bool:
        owner.forwarding_refused("agent")
        return False

    async def attach_x11_listener(chan: Any, auth_proto: bytes, auth_data: bytes,
                                  screen: int) -> str | None:
        owner.forwarding_refused("x11")
        return None

    conn.create_agent_listener = create_agent_listener  # type: ignore[method-assign]
    conn.attach_x11_listener = attach_x11_listener  # type: ignore[method-assign]


def shown(text: str) -> str:
    """A client's string for a log line: at most 64 characters, control and non-ASCII
    characters escaped."""
    return text[:64].encode("unicode_escape").decode("ascii")
