"""Every protocol's session keeps the access-session contract (like trio's ``check_*_stream``).

One contract, :func:`check_contract`, run against each protocol's live session as the
registry sees it: SSH (a real asyncssh client through the broker's own SSH listener to a
real sshd device), the device web UI (a signed-in browser session through the broker's web
origin to an aiohttp device) and the in-memory endpoint of ``broker.testing``. A new protocol
adds one opener here. The contract:

1. opening registers the session, writes its row (live) and starts its recording;
2. a warning reaches the technician where the protocol has a channel for it;
3. a revoke is noticed at the next recheck: the session is cut, leaves the registry, its
   row is closed with the reason and its recording is sealed;
4. the first reason to end a session is the one that stays;
5. a session killed by staff is no longer allowed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import asyncssh
import pytest
from aiohttp import web

from broker.aio import within
from broker.domain.protocols import Protocol
from broker.recording.manifest import MANIFEST_FILE
from broker.revocation.registry import LiveSessions
from broker.services.access_session import AccessSession
from broker.services.context import Context
from broker.services.device_web import WebOptions, configure
from broker.services.directory import Directory
from broker.services.grants import Grants
from broker.services.readiness import NodeState
from broker.services.sessions import kill_session, session_view
from broker.services.setup import initialise, migrate_database
from broker.ssh import asyncssh_fixes
from broker.ssh.channel import handle_process
from broker.ssh.connection import BrokerConnection, ConnectionServices
from broker.store.models import Device, Grant
from broker.testing import MemoryEndpoint
from tests.integration.harness import SshdDevice
from tests.unit.webproxy_kit import sign_in
from tests.web_kit import device_origin


@dataclass
class Opened:
    """One protocol's session, opened by a technician, as the contract needs it."""

    ctx: Context
    registry: LiveSessions
    grant: int
    seen: Callable[[], Awaitable[str]]  # what the technician has been shown so far
    closed: Callable[[], Awaitable[bool]]  # whether the protocol's side is gone
    shows_notices: bool

    @property
    def session(self) -> AccessSession:
        [session] = list(self.registry)
        assert isinstance(session, AccessSession)
        return session


async def _world(root: Path, device: SshdDevice, web_url: str) -> tuple[Context, bytes, int]:
    """A broker's data (own dir), technician ``tech`` (its private key returned), device
    ``dev`` (the real sshd, and ``web_url`` as its web UI) and a grant for ssh and web."""
    config = initialise(root)
    await migrate_database(config.database_url)
    ctx = Context.open(config)
    directory = Directory(ctx, "test")
    key = asyncssh.generate_private_key("ssh-ed25519")
    await directory.add_technician("tech", "Acme Medical", [key])
    added = await directory.add_device(
        Device(name="dev", host="127.0.0.1", port=device.port, login_user=device.user,
               web_url=web_url), "key", device.login_key.read_bytes())
    await configure(ctx, "test", "dev", WebOptions(insecure_http=True))
    tech = (await directory.technician("tech")).technician
    now = ctx.now()
    async with ctx.store.session() as db:
        grant = Grant(technician_id=tech.id or 0, device_id=added.id or 0,
                      protocols=["ssh", "web"], start=now - timedelta(minutes=1),
                      end=now + timedelta(hours=1), state="active", created_at=now)
        db.add(grant)
        await db.flush()
        grant_id = grant.id or 0
    return ctx, key.export_private_key(), grant_id


async def _until(check: Callable[[], Awaitable[bool]], within: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.02)
    return await check()


@asynccontextmanager
async def _device_web() -> AsyncIterator[str]:
    async def home(_request: web.Request) -> web.Response:
        return web.Response(text="device home")

    app = web.Application()
    app.router.add_get("/", home)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


# -- the openers: one per protocol ----------------------------------------------------------


@asynccontextmanager
async def ssh_session(root: Path, device: SshdDevice) -> AsyncIterator[Opened]:
    asyncssh_fixes.install()
    async with _device_web() as web_url:
        ctx, private, grant = await _world(root, device, web_url)
        registry = LiveSessions()
        services = ConnectionServices(ctx, registry, "localhost", 0, handle_process,
                                      node=NodeState())
        listener = await asyncssh.listen(
            "127.0.0.1", 0, server_factory=lambda: BrokerConnection(services),
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")], encoding=None,
            line_editor=False, allow_scp=False, agent_forwarding=False,
            x11_forwarding=False)
        port = listener.sockets[0].getsockname()[1]
        conn = await asyncssh.connect(
            "127.0.0.1", port, username="tech+dev", known_hosts=None,
            client_keys=[asyncssh.import_private_key(private)], agent_path=None)
        process = await conn.create_process("cat", encoding=None)
        shown = bytearray()

        async def read_stderr() -> None:
            while chunk := await process.stderr.read(4096):
                shown.extend(chunk)

        reader = asyncio.create_task(read_stderr())
        process.stdin.write(b"ping\n")
        assert await within(10, process.stdout.readexactly(5)) == b"ping\n"

        async def seen() -> str:
            await asyncio.sleep(0.05)
            return shown.decode(errors="replace")

        async def closed() -> bool:
            return process.exit_status is not None or process.channel.is_closing()

        try:
            yield Opened(ctx, registry, grant, seen, closed, shows_notices=True)
        finally:
            conn.close()
            reader.cancel()
            listener.close()
            await _until(lambda: _empty(registry))
            await ctx.close()


@asynccontextmanager
async def web_session(root: Path, device: SshdDevice) -> AsyncIterator[Opened]:
    async with _device_web() as web_url:
        ctx, _, grant = await _world(root, device, web_url)
        await ctx.close()
        registry = LiveSessions()
        async with device_origin(root, sessions=registry) as (client, web_ctx):
            cookie = await sign_in(client, web_ctx, tech="tech", device="dev")
            page = await client.get(f"/w/{grant}/", headers={"Cookie": cookie})
            assert page.status == 200 and await page.text() == "device home"

            async def seen() -> str:
                return ""  # a browser has no channel for a notice

            async def closed() -> bool:
                answer = await client.get(f"/w/{grant}/", headers={"Cookie": cookie})
                return answer.status == 403

            yield Opened(web_ctx, registry, grant, seen, closed, shows_notices=False)


@asynccontextmanager
async def memory_session(root: Path, device: SshdDevice) -> AsyncIterator[Opened]:
    async with _device_web() as web_url:
        ctx, _, grant = await _world(root, device, web_url)
        registry = LiveSessions()
        endpoint = MemoryEndpoint()
        session = AccessSession(ctx, registry, endpoint, technician="tech", device="dev",
                                client="127.0.0.1:1", protocol="ssh")
        endpoint.session = session
        access = await session.check(Protocol.SSH)
        await session.open(access, "shell")

        async def seen() -> str:
            return "\n".join(endpoint.notices)

        async def closed() -> bool:
            return bool(endpoint.cuts)

        try:
            yield Opened(ctx, registry, grant, seen, closed, shows_notices=True)
        finally:
            await ctx.close()


OPENERS = {"ssh": ssh_session, "web": web_session, "memory": memory_session}


# -- the contract ---------------------------------------------------------------------------


async def _empty(registry: LiveSessions) -> bool:
    return len(registry) == 0


async def _row_state(opened: Opened, session_id: str) -> tuple[str, str | None]:
    view = await session_view(opened.ctx, session_id)
    assert view is not None, f"no row for session {session_id}"
    return view.session.state, view.session.end_reason


async def check_opened(opened: Opened) -> None:
    session = opened.session
    assert session.session_id is not None and session.recording is not None
    assert session.recording.path.is_dir()
    assert (await _row_state(opened, session.session_id))[0] == "live"
    assert session.technician == "tech" and session.device == "dev"
    assert await session.still_allowed() is None


async def check_warning(opened: Opened) -> None:
    await opened.session.warn("your access window closes in 5 minutes")
    shown = await opened.seen()
    if opened.shows_notices:
        assert "your access window closes in 5 minutes" in shown
    else:
        assert shown == ""


async def check_revoke(opened: Opened) -> None:
    session = opened.session
    session_id = session.session_id
    assert session_id is not None and session.recording is not None
    directory = session.recording.path
    await Grants(opened.ctx, "test").revoke(opened.grant, "incident 42")
    assert await opened.registry.recheck() == 1
    assert await _until(opened.closed, within=1.0), "the protocol side was not cut"
    assert await _until(lambda: _empty(opened.registry))
    assert session.closing is not None and "revoked" in session.closing

    async def row_closed() -> bool:
        return (await _row_state(opened, session_id))[0] != "live"

    assert await _until(row_closed)
    state, reason = await _row_state(opened, session_id)
    assert reason is not None and "revoked" in reason, (state, reason)
    assert (directory / MANIFEST_FILE).is_file(), "the recording was not sealed"


async def check_first_reason_wins(opened: Opened) -> None:
    session = opened.session
    await session.terminate("first reason")
    await session.terminate("second reason")
    assert session.closing == "first reason"
    assert await _until(opened.closed)
    session_id = session.session_id
    assert session_id is not None

    async def row_closed() -> bool:
        return (await _row_state(opened, session_id))[0] != "live"

    assert await _until(row_closed)
    assert (await _row_state(opened, session_id))[1] == "first reason"


async def check_kill(opened: Opened) -> None:
    session = opened.session
    assert session.session_id is not None
    await kill_session(opened.ctx, session.session_id, "staff:anna", "suspicious commands")
    reason = await session.still_allowed()
    assert reason is not None and "suspicious commands" in reason


CHECKS = {"opened": check_opened, "warning": check_warning, "revoke": check_revoke,
          "first-reason": check_first_reason_wins, "kill": check_kill}


@pytest.mark.parametrize("check", sorted(CHECKS))
@pytest.mark.parametrize("protocol", sorted(OPENERS))
async def test_every_protocol_keeps_the_session_contract(
        protocol: str, check: str, tmp_path: Path, sshd_device: SshdDevice) -> None:
    async with OPENERS[protocol](tmp_path / "broker", sshd_device) as opened:
        await CHECKS[check](opened)


async def test_the_contract_fails_a_session_that_ignores_a_revoke(
        tmp_path: Path, sshd_device: SshdDevice) -> None:
    """The contract can fail: a protocol side that never cuts is caught."""

    class Deaf(MemoryEndpoint):
        async def cut(self, reason: str) -> None:
            return None

    async with memory_session(tmp_path / "broker", sshd_device) as opened:
        opened.session.endpoint = Deaf()
        with pytest.raises(AssertionError, match="not cut"):
            await check_revoke(opened)
