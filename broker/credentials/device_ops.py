"""What a credential rotation does on the device, over the broker's own SSH session:
`chpasswd`, an interactive `passwd`, reading and atomically replacing authorized_keys, and a
fresh login to prove a secret works. Secrets travel on stdin or a PTY, never on a command
line (where `ps` on the device would show them), and never appear in an error message."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

import asyncssh

from broker.domain.rotation import Prompt, classify_prompt
from broker.errors import DeviceError
from broker.services.context import Context
from broker.services.sessions import DeviceLogin
from broker.ssh.upstream import connect_login

COMMAND_TIMEOUT = 30.0
PROMPT_TIMEOUT = 15.0
READ_KEYS = "if [ -e ~/.ssh/authorized_keys ]; then cat ~/.ssh/authorized_keys; fi"
WRITE_KEYS = ("umask 077 && mkdir -p ~/.ssh && cat > ~/.ssh/authorized_keys.rotating"
              " && mv -f ~/.ssh/authorized_keys.rotating ~/.ssh/authorized_keys")


def scrub(text: str, *secrets: str) -> str:
    """One line of ``text`` with every secret blanked out."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "*****")
    line = " ".join(text.split())
    return line[:300] or "(no output)"


async def _run(conn: asyncssh.SSHClientConnection, command: str, stdin: str,
               what: str, *secrets: str) -> str:
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            process = await conn.create_process(command)
            try:
                process.stdin.write(stdin)
                process.stdin.write_eof()
            except (BrokenPipeError, OSError, asyncssh.Error):
                pass  # it ended before reading its input: its exit status says why
            result = await process.wait(check=False)
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        raise DeviceError(f"{what}: {scrub(str(exc) or type(exc).__name__, *secrets)}") from None
    if result.exit_status != 0:
        said = scrub(f"{_text(result.stderr)} {_text(result.stdout)}", *secrets)
        raise DeviceError(f"{what} exited with status {result.exit_status}: {said}")
    return _text(result.stdout)


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""


async def chpasswd(conn: asyncssh.SSHClientConnection, user: str, new: str) -> None:
    await _run(conn, "chpasswd", f"{user}:{new}\n", "chpasswd", new)


async def passwd(conn: asyncssh.SSHClientConnection, current: str, new: str) -> None:
    """Answer an interactive `passwd` on a PTY: current password (if asked), new, retype."""
    try:
        process = await conn.create_process("passwd", term_type="dumb", term_size=(80, 24))
    except (asyncssh.Error, OSError) as exc:
        raise DeviceError(f"passwd: cannot start it: {scrub(str(exc), current, new)}") from None
    transcript = ""
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT):
            transcript = await _answer_prompts(process, current, new)
            await process.wait_closed()
    except TimeoutError:
        raise DeviceError("passwd: no answer from the device in time (prompt not recognised?)"
                          ) from None
    except (asyncssh.Error, OSError) as exc:
        raise DeviceError(f"passwd: {scrub(str(exc), current, new)}") from None
    finally:
        process.close()
    if process.exit_status != 0:
        raise DeviceError(f"passwd exited with status {process.exit_status}:"
                          f" {scrub(transcript, current, new)}")


async def _answer_prompts(process: asyncssh.SSHClientProcess[str], current: str,
                          new: str) -> str:
    """Feed the answers; returns the end of what passwd printed (for an error message)."""
    pending, transcript, answers = "", "", 0
    while True:
        try:
            async with asyncio.timeout(PROMPT_TIMEOUT):
                chunk = await process.stdout.read(1024)
        except TimeoutError:
            raise DeviceError(f"passwd: stuck at {scrub(pending[-80:], current, new)!r}"
                              ) from None
        if not chunk:
            break
        pending += chunk
        transcript = (transcript + chunk)[-400:]
        prompt = classify_prompt(pending)
        if prompt is None:
            continue
        answers += 1
        if answers > 6:
            raise DeviceError("passwd keeps asking (it refused the new password?):"
                              f" {scrub(transcript, current, new)}")
        process.stdin.write((current if prompt is Prompt.CURRENT else new) + "\n")
        pending = ""
    with contextlib.suppress(OSError, asyncssh.Error):
        process.stdin.write_eof()
    return transcript


async def read_authorized_keys(conn: asyncssh.SSHClientConnection) -> str:
    return await _run(conn, READ_KEYS, "", "reading ~/.ssh/authorized_keys")


async def write_authorized_keys(conn: asyncssh.SSHClientConnection, text: str) -> None:
    await _run(conn, WRITE_KEYS, text, "replacing ~/.ssh/authorized_keys")


async def fresh_login(ctx: Context, login: DeviceLogin, kind: str, secret: bytes,
                      ) -> asyncssh.SSHClientConnection:
    """A new connection that can only succeed with ``secret``, proved by running `true`."""
    conn = await connect_login(ctx, replace(login, kind=kind, secret=secret))
    try:
        await _run(conn, "true", "", "a command after the fresh login")
    except BaseException:
        conn.close()
        raise
    return conn


async def works(ctx: Context, login: DeviceLogin, kind: str, secret: bytes) -> bool:
    """Does a fresh login with ``secret`` succeed now?"""
    try:
        conn = await fresh_login(ctx, login, kind, secret)
    except DeviceError:
        return False
    conn.close()
    return True
