"""The simulated device's own web UI, as pumps and analyzers have one.

    GET  /            302 to /status or /login (an absolute Location, as devices often send)
    GET  /login       a login form with a hidden anti-forgery field; POST checks the password
    GET  /status      identity, uptime, configuration; absolute links to the other pages
    GET  /logs        a live log view: /static/livelog.js opens the WebSocket /ws/log
    GET  /ws/log      the last log lines, then new ones as the device writes them; a text
                      message "mark TEXT" writes TEXT to the device log
    POST /logout

Sessions are a random cookie (``pumpsession``); the password is the device's service password,
checked in constant time by :class:`DeviceState`. Everything is HTTP on loopback: the broker
reaches it with ``--insecure-http`` (real devices should offer HTTPS).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from broker.demo.device_state import LOG_FILE, DeviceState

COOKIE = "pumpsession"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TAIL_INTERVAL = 0.2
STATE = web.AppKey("device_state", DeviceState)
SESSIONS = web.AppKey("device_web_sessions", set[str])
FORM_TOKENS = web.AppKey("device_form_tokens", set[str])

LIVELOG_JS = """\
"use strict";
const out = document.getElementById("log");
const state = document.getElementById("state");
const url = new URL("ws/log", document.baseURI);
url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
const socket = new WebSocket(url.href);
socket.onopen = () => { state.textContent = "live"; };
socket.onmessage = (event) => { out.textContent += event.data + "\\n"; };
socket.onclose = (event) => { state.textContent = "closed (" + event.code + ")"; };
document.getElementById("mark-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = document.getElementById("mark");
  socket.send("mark " + text.value);
  text.value = "";
});
"""

DEVICE_CSS = """\
body { font: 15px/1.4 sans-serif; margin: 0; background: #eef2f5; }
header { background: #0b4f6c; color: #fff; padding: .5rem 1rem; }
main { padding: 1rem; } pre { background: #111; color: #9f9; padding: .5rem; min-height: 8rem; }
table td { padding: .2rem .6rem; } .bad { color: #a00; }
"""


@dataclass
class DeviceWeb:
    """A running device web UI (``url`` is where it listens)."""

    runner: web.AppRunner
    host: str
    port: int
    requests: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    async def close(self) -> None:
        await self.runner.cleanup()


def _page(title: str, body: str, *, script: str | None = None) -> web.Response:
    tags = f'<script src="/static/{script}" defer></script>' if script else ""
    return web.Response(content_type="text/html", text=(
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f'<link rel="stylesheet" href="/static/device.css">{tags}</head>'
        f"<body><header>{html.escape(title)}</header><main>{body}</main></body></html>"))


def _signed_in(request: web.Request) -> bool:
    return request.cookies.get(COOKIE, "") in request.app[SESSIONS]


def _absolute(request: web.Request, path: str) -> str:
    return f"{request.scheme}://{request.host}{path}"


async def index(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound(_absolute(request, "/status" if _signed_in(request) else "/login"))


async def login_form(request: web.Request, error: str = "") -> web.Response:
    token = secrets.token_urlsafe(16)
    request.app[FORM_TOKENS].add(token)
    state = request.app[STATE]
    message = f'<p class="bad">{html.escape(error)}</p>' if error else ""
    return _page(f"{state.identity.model} - service login", f"""{message}
<form method="post" action="/login">
<input type="hidden" name="form_token" value="{token}">
<p><label>User <input name="username" autocomplete="username"></label></p>
<p><label>Password <input name="password" type="password"></label></p>
<p><button type="submit">Log in</button></p>
</form>""")


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    state = request.app[STATE]
    token = str(form.get("form_token", ""))
    if token not in request.app[FORM_TOKENS]:
        return await login_form(request, "the form expired; try again")
    request.app[FORM_TOKENS].discard(token)
    if not state.check_password(str(form.get("username", "")), str(form.get("password", ""))):
        state.log("WARN", f"web login failed from {request.remote}")
        return await login_form(request, "wrong user name or password")
    session = secrets.token_urlsafe(24)
    request.app[SESSIONS].add(session)
    state.log("INFO", f"web login {state.username} from {request.remote}")
    response = web.HTTPSeeOther(_absolute(request, "/status"))
    response.set_cookie(COOKIE, session, path="/", httponly=True, samesite="Lax")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    request.app[SESSIONS].discard(request.cookies.get(COOKIE, ""))
    response = web.HTTPSeeOther(_absolute(request, "/login"))
    response.del_cookie(COOKIE, path="/")
    raise response


async def status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    who = state.identity
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                   for k, v in state.read_config())
    uptime = str(state.uptime()).split(".")[0]
    return _page(f"{who.name} status", f"""
<h1 id="device">{html.escape(who.name)}: {html.escape(who.model)}</h1>
<p>Firmware <span id="firmware">{html.escape(who.firmware)}</span>, serial
{html.escape(who.serial)}, up {uptime}. State: <strong id="pump-state">standby</strong>.</p>
<h2>Configuration</h2><table id="config">{rows}</table>
<p><a id="live-log" href="{_absolute(request, '/logs')}">Live log</a></p>
<form method="post" action="/logout"><button type="submit">Log out</button></form>""")


async def logs(request: web.Request) -> web.Response:
    return _page("Live log", """
<p>Connection: <span id="state">connecting</span></p>
<pre id="log"></pre>
<form id="mark-form"><input id="mark" placeholder="add a note to the device log">
<button id="send" type="submit">Add note</button></form>
<p><a href="/status">Back to status</a></p>""", script="livelog.js")


async def live_log(request: web.Request) -> web.StreamResponse:
    if not _signed_in(request):
        raise web.HTTPUnauthorized(text="log in first")
    state = request.app[STATE]
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    path = state.root / LOG_FILE
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for line in lines[-10:]:
        await socket.send_str(line)
    offset = path.stat().st_size

    async def tail() -> None:
        nonlocal offset
        while not socket.closed:
            await asyncio.sleep(TAIL_INTERVAL)
            size = path.stat().st_size
            if size <= offset:
                continue
            with path.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read(size - offset)
            offset = size
            for line in chunk.decode("utf-8", "replace").splitlines():
                await socket.send_str(line)

    follower = asyncio.ensure_future(tail())
    try:
        async for message in socket:
            if message.type.name == "TEXT" and message.data.startswith("mark "):
                state.log("INFO", f"note from web: {message.data[5:][:200]}")
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await follower
    return socket


def _protected(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not _signed_in(request):
            raise web.HTTPFound(_absolute(request, "/login"))
        return await handler(request)
    return guarded


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name == "livelog.js":
        return web.Response(text=LIVELOG_JS, content_type="application/javascript")
    if name == "device.css":
        return web.Response(text=DEVICE_CSS, content_type="text/css")
    raise web.HTTPNotFound()


def device_web_app(state: DeviceState, seen: list[str] | None = None) -> web.Application:
    @web.middleware
    async def remember(request: web.Request, handler: Handler
                       ) -> web.StreamResponse:
        if seen is not None:
            seen.append(f"{request.method} {request.raw_path}")
        return await handler(request)

    app = web.Application(middlewares=[remember])
    app[STATE] = state
    app[SESSIONS] = set()
    app[FORM_TOKENS] = set()
    app.router.add_get("/", index)
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/status", _protected(status))
    app.router.add_get("/logs", _protected(logs))
    app.router.add_get("/ws/log", live_log)
    app.router.add_get("/static/{name}", static)
    return app


async def start_device_web(state: DeviceState, host: str = "127.0.0.1", port: int = 0
                           ) -> DeviceWeb:
    """Serve the device's web UI on ``host:port`` (0: a free port)."""
    seen: list[str] = []
    runner = web.AppRunner(device_web_app(state, seen), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, shutdown_timeout=1)
    await site.start()
    return DeviceWeb(runner, host, runner.addresses[0][1], seen)
