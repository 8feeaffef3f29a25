"""The device web proxy in-process: sign-in links, the grant-scoped cookie, relaying (methods,
streaming, redirects, links, cookies, WebSockets), credential injection, HTTPS trust, the HAR
recording, and the end of the window."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import errno
import hashlib
import json
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlmodel import select

from broker.aio import within
from broker.demo.device_state import DeviceIdentity, DeviceState, seed_root
from broker.demo.web import device_web_app
from broker.errors import Refused
from broker.recording.flusher import default_flusher
from broker.recording.har import read_har
from broker.revocation.registry import LiveSessions
from broker.services.device_web import WebOptions, configure
from broker.services.grants import Grants
from broker.services.web_signin import create_signin
from broker.store.models import AuditEvent
from broker.testing import FakeClock
from tests.unit.webproxy_kit import PASSWORD, add_grant, recording_app, sign_in, upstream
from tests.web_kit import device_origin

BIG = 3 * 1024 * 1024 + 17


def device_app(seen: list[str]) -> web.Application:
    app = recording_app(seen)

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "method": request.method, "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(), "host": request.host,
            "cookie": request.headers.get("Cookie"), "origin": request.headers.get("Origin"),
            "authorization": request.headers.get("Authorization"),
            "forwarded_for": request.headers.get("X-Forwarded-For")})

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        for offset in range(0, BIG, 65536):
            await response.write(bytes([offset % 251]) * min(65536, BIG - offset))
        await response.write_eof()
        return response

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(b"first\n")
        await asyncio.sleep(1.0)
        await response.write(b"second\n")
        await response.write_eof()
        return response

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://{request.host}/target?x=1")

    async def page(request: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            f'<a id="abs" href="http://{request.host}/logs">l</a>'
            f'<img src="/img/a.png"><a href="rel/x">r</a><a href="https://example.org/">e</a>'
            f'<script src=\'//{request.host}/app.js\'></script>'))

    async def set_cookie(request: web.Request) -> web.Response:
        response = web.Response(text="cookie set")
        response.set_cookie("devsess", "device-secret-cookie", path="/", domain="127.0.0.1")
        return response

    async def ws(request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_str("hello")
        async for message in socket:
            if message.type is aiohttp.WSMsgType.TEXT:
                await socket.send_str("echo:" + message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                await socket.send_bytes(message.data[::-1])
        return socket

    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = 100_000
        await response.prepare(request)
        await response.write(b"partial")
        assert request.transport is not None
        request.transport.abort()  # the device dies mid-body
        return response

    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/broken", broken)
    app.router.add_get("/big", big)
    app.router.add_get("/slow", slow)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/page", page)
    app.router.add_get("/setcookie", set_cookie)
    app.router.add_get("/ws", ws)
    return app


def har_of(broker_dir: Path) -> dict:
    [path] = list((broker_dir / "recordings").glob("*/web.har"))
    return read_har(path)


async def kinds(ctx) -> list[str]:  # type: ignore[no-untyped-def]
    async with ctx.store.session() as db:
        return list((await db.exec(select(AuditEvent.kind))).all())


# -- sign-in ---------------------------------------------------------------------------------
async def test_signin_link_works_once_and_expires(broker_dir: Path) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    async with upstream(device_app) as device, \
            device_origin(broker_dir, clock=clock) as (client, ctx):
        await add_grant(ctx, device.url)
        token, _ = await create_signin(ctx, "tech", "dev", "test")
        page = await client.get(f"/w/signin/{token}")
        csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())
        assert csrf and "Open dev" in await page.text()
        pre = {"Cookie": f"broker_web_signin={page.cookies['broker_web_signin'].value}"}
        forged = await client.post(f"/w/signin/{token}", data={"csrf": "x" * 64},
                                   headers=pre, allow_redirects=False)
        assert forged.status == 403
        first = await client.post(f"/w/signin/{token}", data={"csrf": csrf.group(1)},
                                  headers=pre, allow_redirects=False)
        assert first.status == 303
        again = await client.post(f"/w/signin/{token}", data={"csrf": csrf.group(1)},
                                  headers=pre, allow_redirects=False)
        assert again.status == 403 and "not valid" in await again.text()
        late, _ = await create_signin(ctx, "tech", "dev", "test")
        clock.advance(dt.timedelta(minutes=5, seconds=1))
        expired = await client.get(f"/w/signin/{late}")
        assert expired.status == 403
        assert (await client.get("/w/signin/not-a-token")).status == 403
        seen = await kinds(ctx)
        assert seen.count("web.signin_link") == 2 and seen.count("web.signin") == 1
        assert "web.signin_refused" in seen and "web.session_started" in seen


async def test_signin_refused_without_a_web_grant_or_web_ui(broker_dir: Path) -> None:
    async with upstream(device_app) as device, device_origin(broker_dir) as (_, ctx):
        await add_grant(ctx, device.url, protocols=("ssh",))
        with pytest.raises(Refused, match="allows ssh, not web"):
            await create_signin(ctx, "tech", "dev", "test")
        await add_grant(ctx, device.url, device="plain", insecure_http=False)
        with pytest.raises(Refused, match="plain http"):
            await create_signin(ctx, "tech", "plain", "test")
        assert "web.signin_refused" in await kinds(ctx)
    assert device.seen == []


async def test_requests_without_the_grants_cookie_never_reach_a_device(broker_dir: Path) -> None:
    async with upstream(device_app) as one, upstream(device_app) as two, \
            device_origin(broker_dir) as (client, ctx):
        first = await add_grant(ctx, one.url)
        second = await add_grant(ctx, two.url, device="other")
        cookie = await sign_in(client, ctx)
        nobody = await client.get(f"/w/{first}/echo")
        assert nobody.status == 403 and "weblogin" in await nobody.text()
        forged = await client.get(f"/w/{first}/echo", headers={"Cookie": "broker_web=forged"})
        assert forged.status == 403
        crossed = await client.get(f"/w/{second}/echo", headers={"Cookie": cookie})
        assert crossed.status == 403 and f"grant {first}" in await crossed.text()
        ok = await client.get(f"/w/{first}/echo", headers={"Cookie": cookie})
        assert ok.status == 200
    assert one.seen == [f"GET /echo 127.0.0.1:{one.port}"]
    assert two.seen == []


# -- relaying --------------------------------------------------------------------------------
async def test_methods_bodies_headers_and_streaming(broker_dir: Path) -> None:
    async with upstream(device_app) as device, device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, device.url)
        cookie = {"Cookie": await sign_in(client, ctx) + "; portal=x",
                  "Authorization": "Basic dGVjaDp0ZWNo",
                  "Origin": f"http://127.0.0.1:{client.server.port}"}  # this origin's own
        base = f"/w/{grant}/"
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            body = b"x" * 1000 if method in ("POST", "PUT", "PATCH") else None
            answer = await client.request(method, base + "echo", data=body, headers=cookie)
            seen = await answer.json()
            assert seen["method"] == method and seen["length"] == (len(body) if body else 0)
            assert seen["host"] == f"127.0.0.1:{device.port}"
            assert seen["cookie"] is None and seen["authorization"] is None  # nothing leaks
            assert seen["origin"] == f"http://127.0.0.1:{device.port}"
            assert seen["forwarded_for"] == "127.0.0.1"
        head = await client.head(base + "echo", headers=cookie)
        assert head.status == 200

        async def upload():  # type: ignore[no-untyped-def]
            for _ in range(40):
                yield b"u" * 65536
        sent = await client.post(base + "echo", data=upload(), headers=cookie)
        assert (await sent.json())["sha256"] == hashlib.sha256(b"u" * 65536 * 40).hexdigest()

        big = await client.get(base + "big", headers=cookie)
        data = await big.read()
        assert len(data) == BIG and data[:1] == b"\x00"

        started = asyncio.get_running_loop().time()
        slow = await client.get(base + "slow", headers=cookie)
        first = await slow.content.readline()
        assert first == b"first\n" and asyncio.get_running_loop().time() - started < 0.9
        assert await slow.content.read() == b"second\n"

        moved = await client.get(base + "redirect", headers=cookie, allow_redirects=False)
        assert moved.status == 302 and moved.headers["Location"] == f"{base}target?x=1"

        page = await client.get(base + "page", headers=cookie)
        html = await page.text()
        assert f'href="{base}logs"' in html and f'src="{base}img/a.png"' in html
        assert 'href="rel/x"' in html and 'href="https://example.org/"' in html
        assert f"src='{base}app.js'" in html
        assert page.headers["X-Content-Type-Options"] == "nosniff"

        cut = await client.get(base + "broken", headers=cookie)
        with pytest.raises(aiohttp.ClientPayloadError):
            await cut.read()  # a cut body is never passed off as whole

        set_cookie = await client.get(base + "setcookie", headers=cookie)
        assert "Set-Cookie" not in set_cookie.headers  # the device's cookie stays in the jar
        echoed = await (await client.get(base + "echo", headers=cookie)).json()
        assert echoed["cookie"] == "devsess=device-secret-cookie"

    har = har_of(broker_dir)["log"]
    entries = har["entries"]
    assert har["version"] == "1.2"
    [patch] = [e["request"]["postData"] for e in entries if e["request"]["method"] == "PATCH"]
    assert patch["encoding"] == "base64" and base64.b64decode(patch["text"]) == b"x" * 1000
    [big_entry] = [e for e in entries if e["request"]["url"].endswith("/big")]
    content = big_entry["response"]["content"]
    assert content["size"] == BIG and "text" not in content
    stored = broker_dir / "recordings" / next((broker_dir / "recordings").glob("*/web.har")
                                              ).parent.name / content["_file"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == content["_sha256"]
    headers = json.dumps([[e["request"]["headers"], e["response"]["headers"]] for e in entries])
    assert "device-secret-cookie" not in headers and "dGVjaDp0ZWNo" not in headers
    [cookie_entry] = [e for e in entries if e["request"]["url"].endswith("/setcookie")]
    assert {"name": "Set-Cookie", "value": "[redacted]"} in cookie_entry["response"]["headers"]


async def test_websocket_is_relayed_and_recorded(broker_dir: Path) -> None:
    async with upstream(device_app) as device, device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, device.url)
        cookie = await sign_in(client, ctx)
        async with client.ws_connect(f"/w/{grant}/ws", headers={"Cookie": cookie}) as ws:
            assert (await ws.receive_str()) == "hello"
            await ws.send_str("ping")
            assert (await ws.receive_str()) == "echo:ping"
            await ws.send_bytes(b"\x01\x02\x03")
            assert (await ws.receive_bytes()) == b"\x03\x02\x01"
    await asyncio.sleep(0.1)
    [entry] = [e for e in har_of(broker_dir)["log"]["entries"]
               if e.get("_resourceType") == "websocket"]
    messages = [(m["type"], m["data"]) for m in entry["_webSocketMessages"]]
    assert messages == [("receive", "hello"), ("send", "ping"), ("receive", "echo:ping"),
                        ("send", base64.b64encode(b"\x01\x02\x03").decode()),
                        ("receive", base64.b64encode(b"\x03\x02\x01").decode())]
    assert entry["response"]["status"] == 101


@dataclass
class UnwritableSession:
    client: Any
    seen: list[str]  # what the device was asked
    prefix: str
    cookie: dict[str, str]
    directory: Path
    failures: list[tuple[str, int | None]]


@contextlib.asynccontextmanager
async def unwritable_web_session(broker_dir: Path) -> AsyncIterator[UnwritableSession]:
    """A signed-in web session whose recording directory then takes no new file (immutable,
    even for root), with what the flusher's listeners (the storage guard) hear meanwhile."""
    failures: list[tuple[str, int | None]] = []
    unlisten = default_flusher().on_failure(
        lambda path, exc: failures.append((path.name, exc.errno)))
    async with upstream(device_app) as device, device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, device.url)
        cookie = {"Cookie": await sign_in(client, ctx)}
        directory = next((broker_dir / "recordings").glob("*/web.har")).parent
        subprocess.run(["chattr", "+i", str(directory)], check=True)
        try:
            yield UnwritableSession(client, device.seen, f"/w/{grant}", cookie, directory,
                                    failures)
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
            unlisten()


async def test_a_websocket_that_cannot_be_recorded_is_refused_with_one_line(
        broker_dir: Path) -> None:
    """The WebSocket's log cannot exist, so the WebSocket is refused (503, one line) and
    never reaches the device, and the storage guard hears of it."""
    async with unwritable_web_session(broker_dir) as web_session:
        client, prefix, cookie = web_session.client, web_session.prefix, web_session.cookie
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(f"{prefix}/ws", headers=cookie)
        assert refused.value.status == 503
        upgrade = await client.get(f"{prefix}/ws", headers={
            **cookie, "Connection": "Upgrade", "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode()})
        assert upgrade.status == 503
        assert ("this cannot be recorded right now (Operation not permitted), and nothing"
                " goes through the broker unrecorded; try again later or tell the"
                " hospital&#39;s IT") in await upgrade.text()
    assert web_session.failures == [("websocket-1.jsonl", errno.EPERM),
                                    ("websocket-2.jsonl", errno.EPERM)]
    assert "GET /ws" not in " ".join(web_session.seen)


async def test_a_body_the_storage_does_not_take_goes_no_further(broker_dir: Path) -> None:
    """A body over the inline limit is spilled under bodies/; when that fails, the rest of
    the body goes nowhere: a download already under way is cut (the browser cannot take it
    for whole), an upload is refused with one line, the failure is reported (the storage
    guard cuts the session), and the HAR entries say what was lost."""
    async with unwritable_web_session(broker_dir) as web_session:
        client, prefix, cookie = web_session.client, web_session.prefix, web_session.cookie
        download = await client.get(f"{prefix}/big", headers=cookie)
        assert download.status == 200  # its head went before the body outgrew memory
        with pytest.raises(aiohttp.ClientPayloadError):
            await download.read()
        upload = await client.post(f"{prefix}/echo", data=b"u" * (2 * 1024 * 1024),
                                   headers=cookie)
        assert upload.status == 503
        assert ("this cannot be recorded right now (Operation not permitted), and nothing"
                " goes through the broker unrecorded") in await upload.text()
    assert web_session.failures == [("bodies", errno.EPERM), ("bodies", errno.EPERM)]
    assert not (web_session.directory / "bodies").exists()
    entries = {e["request"]["url"].rsplit("/", 1)[-1]: e
               for e in har_of(broker_dir)["log"]["entries"]}
    lost = entries["big"]["response"]["content"]
    assert lost["_lost"] == "Operation not permitted" and "text" not in lost
    assert lost["_size"] > 1024 * 1024
    sent = entries["echo"]["request"]["postData"]
    assert sent["_lost"] == "Operation not permitted" and "text" not in sent
    assert entries["echo"]["_error"] == "not recorded: Operation not permitted"


# -- credential injection --------------------------------------------------------------------
def basic_app(seen: list[str]) -> web.Application:
    app = recording_app(seen)
    expected = "Basic " + base64.b64encode(f"service:{PASSWORD}".encode()).decode()

    async def root(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != expected:
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": 'Basic realm="pump"'})
        return web.Response(text="basic ok")

    app.router.add_get("/", root)
    return app


def digest_app(seen: list[str]) -> web.Application:
    app = recording_app(seen)
    realm, nonce = "pump", "n0nce1234"

    def h(text: str) -> str:
        return hashlib.md5(text.encode()).hexdigest()

    async def root(request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        fields = dict(re.findall(r'(\w+)="?([^",]+)"?', header))
        if header.startswith("Digest ") and fields.get("username") == "service":
            ha1 = h(f"service:{realm}:{PASSWORD}")
            ha2 = h(f"{request.method}:{fields['uri']}")
            good = h(f"{ha1}:{nonce}:{fields['nc']}:{fields['cnonce']}:auth:{ha2}")
            if fields.get("response") == good:
                return web.Response(text="digest ok")
        raise web.HTTPUnauthorized(headers={
            "WWW-Authenticate": f'Digest realm="{realm}", nonce="{nonce}", qop="auth"'})

    app.router.add_get("/", root)
    return app


@pytest.mark.parametrize(("auth", "build", "text"), [("basic", basic_app, "basic ok"),
                                                      ("digest", digest_app, "digest ok")])
async def test_basic_and_digest_credentials_are_injected(broker_dir: Path, auth: str,
                                                         build, text: str) -> None:  # type: ignore[no-untyped-def]
    async with upstream(build) as device, device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, device.url, auth=auth)
        cookie = await sign_in(client, ctx)
        answer = await client.get(f"/w/{grant}/", headers={"Cookie": cookie})
        assert answer.status == 200 and await answer.text() == text
    assert PASSWORD not in (next((broker_dir / "recordings").glob("*/web.har"))).read_text()


async def test_form_login_on_the_simulated_device(broker_dir: Path, tmp_path: Path) -> None:
    seed_root(tmp_path, DeviceIdentity())
    state = DeviceState(tmp_path, DeviceIdentity(), "service", PASSWORD)
    async with upstream(lambda seen: device_web_app(state, seen)) as device, \
            device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, device.url, auth="form", form_path="/login")
        cookie = await sign_in(client, ctx)
        status = await client.get(f"/w/{grant}/", headers={"Cookie": cookie})
        text = await status.text()
        assert status.status == 200 and "Infusomat Space P" in text, text
        assert f'href="/w/{grant}/logs"' in text
        assert "web login service" in (tmp_path / "logs/pump.log").read_text()
        assert "web.device_login" in await kinds(ctx)
    har = har_of(broker_dir)["log"]["entries"]
    login = [e for e in har if e.get("_broker") == "credential-injection"]
    assert [e["request"]["method"] for e in login] == ["GET", "POST"]
    params = {p["name"]: p["value"] for p in login[1]["request"]["postData"]["params"]}
    assert params["password"] == "[redacted]" and params["username"] == "service"
    assert PASSWORD not in json.dumps(har)


async def test_a_wrong_device_password_is_a_clear_502(broker_dir: Path, tmp_path: Path) -> None:
    seed_root(tmp_path, DeviceIdentity())
    state = DeviceState(tmp_path, DeviceIdentity(), "service", "another password")
    async with upstream(lambda seen: device_web_app(state, seen)) as device, \
            device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, device.url, auth="form", form_path="/login")
        cookie = await sign_in(client, ctx)
        answer = await client.get(f"/w/{grant}/status", headers={"Cookie": cookie})
        assert answer.status == 502 and "web login" in await answer.text()
        assert "web.device_login_failed" in await kinds(ctx)


# -- HTTPS to the device ---------------------------------------------------------------------
def self_signed(directory: Path) -> tuple[Path, Path, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    import ipaddress
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "dev.crt", directory / "dev.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path, cert.fingerprint(hashes.SHA256()).hex()


@pytest.mark.parametrize("trust", ["pin", "ca", "wrong-pin", "system"])
async def test_https_devices_are_trusted_only_as_configured(broker_dir: Path, tmp_path: Path,
                                                            trust: str) -> None:
    cert, key, pin = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with upstream(device_app, ssl=context) as device, \
            device_origin(broker_dir) as (client, ctx):
        url = f"https://127.0.0.1:{device.port}/"
        grant = await add_grant(ctx, url, insecure_http=False)
        options = {"pin": WebOptions(pin_sha256=pin), "ca": WebOptions(ca_pem=cert.read_text()),
                   "wrong-pin": WebOptions(pin_sha256="0" * 64), "system": WebOptions()}[trust]
        await configure(ctx, "test", "dev", options)
        cookie = await sign_in(client, ctx)
        answer = await client.get(f"/w/{grant}/echo", headers={"Cookie": cookie})
        if trust in ("pin", "ca"):
            assert answer.status == 200 and (await answer.json())["method"] == "GET"
        else:
            assert answer.status == 502
            assert device.seen == []


# -- the end of the window -------------------------------------------------------------------
async def test_revoke_closes_websockets_and_refuses_requests(broker_dir: Path) -> None:
    sessions = LiveSessions()
    async with upstream(device_app) as device, \
            device_origin(broker_dir, sessions=sessions) as (client, ctx):
        grant = await add_grant(ctx, device.url)
        cookie = await sign_in(client, ctx)
        assert len(sessions) == 1
        ws = await client.ws_connect(f"/w/{grant}/ws", headers={"Cookie": cookie})
        assert await ws.receive_str() == "hello"
        await Grants(ctx, "test").revoke(grant, "done")
        started = asyncio.get_running_loop().time()
        assert await sessions.recheck() == 1  # what the change feed does on grant.revoked
        closing = await within(1.0, ws.receive())
        assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1008
        assert "revoked" in closing.extra
        assert asyncio.get_running_loop().time() - started < 1.0
        await ws.close()
        after = await client.get(f"/w/{grant}/echo", headers={"Cookie": cookie})
        assert after.status == 403
        assert "window for dev was closed early (your grant" in await after.text()
        assert len(sessions) == 0
        assert "web.session_ended" in await kinds(ctx)
    directory = next((broker_dir / "recordings").glob("*/web.har")).parent
    assert (directory / "manifest.sig").exists()
    har = read_har(directory / "web.har")
    assert "_truncated" not in har["log"]
    assert any(e.get("_resourceType") == "websocket" for e in har["log"]["entries"])
    assert device.seen.count(f"GET /echo 127.0.0.1:{device.port}") == 0


async def test_the_window_end_is_enforced_per_request(broker_dir: Path) -> None:
    clock = FakeClock(dt.datetime.now(dt.UTC))
    async with upstream(device_app) as device, \
            device_origin(broker_dir, clock=clock) as (client, ctx):
        grant = await add_grant(ctx, device.url, hours=1)
        cookie = await sign_in(client, ctx)
        assert (await client.get(f"/w/{grant}/echo", headers={"Cookie": cookie})).status == 200
        clock.advance(dt.timedelta(hours=1, seconds=1))
        closed = await client.get(f"/w/{grant}/echo", headers={"Cookie": cookie})
        assert closed.status == 403 and "window" in await closed.text()
    assert len(device.seen) == 1


async def test_another_node_carries_on_the_signed_in_session(broker_dir: Path) -> None:
    """A cookie this node never saw (HAProxy sent the browser elsewhere, or the broker
    restarted) works while its web session and grant are good, in a new recorded session."""
    async with upstream(device_app) as device:
        async with device_origin(broker_dir) as (client, ctx):
            grant = await add_grant(ctx, device.url)
            cookie = await sign_in(client, ctx)
        async with device_origin(broker_dir) as (client, ctx):
            answer = await client.get(f"/w/{grant}/echo", headers={"Cookie": cookie})
            assert answer.status == 200
            await Grants(ctx, "test").revoke(grant, "done")
        async with device_origin(broker_dir) as (client, ctx):
            refused = await client.get(f"/w/{grant}/echo", headers={"Cookie": cookie})
            assert refused.status == 403 and "window" in await refused.text()
    assert len(list((broker_dir / "recordings").glob("*/web.har"))) == 2
    assert device.seen == [f"GET /echo 127.0.0.1:{device.port}"]


async def test_refusal_pages_name_the_real_weblogin_command(broker_dir: Path) -> None:
    from tests.unit.webproxy_kit import add_grant
    from tests.web_kit import device_origin

    async with device_origin(broker_dir) as (client, ctx):
        grant = await add_grant(ctx, "http://127.0.0.1:9/", device="pump-7")
        command = "ssh -p 2222 YOUR-NAME@broker.test weblogin DEVICE"  # the template's config
        for path in (f"/w/{grant}/", "/w/signin/not-a-link"):
            refused = await client.get(path)
            text = await refused.text()
            assert refused.status == 403 and command in text, (path, text)
            assert "PORT" not in text and "TECH@BROKER" not in text


async def test_a_draining_node_opens_no_new_web_session(broker_dir: Path) -> None:
    """Draining: a sign-in is refused with one line (its one-use link not spent), and a
    cookie another node signed in is not resumed here; once not draining, both work."""
    from broker.http.keys import NODE

    async with upstream(device_app) as device:
        async with device_origin(broker_dir) as (client, ctx):
            grant = await add_grant(ctx, device.url)
            cookie = await sign_in(client, ctx)
        async with device_origin(broker_dir) as (client, ctx):
            client.app[NODE].draining = True
            token, _ = await create_signin(ctx, "tech", "dev", "test")
            page = await client.get(f"/w/signin/{token}")
            csrf = re.search(r'name="csrf" value="([^"]+)"', await page.text())
            assert csrf
            pre = {"Cookie": f"broker_web_signin={page.cookies['broker_web_signin'].value}"}
            refused = await client.post(f"/w/signin/{token}", data={"csrf": csrf.group(1)},
                                        headers=pre, allow_redirects=False)
            assert refused.status == 503
            assert "broker: this broker node is draining" in await refused.text()
            resumed = await client.get(f"/w/{grant}/echo", headers={"Cookie": cookie})
            assert resumed.status == 503
            client.app[NODE].draining = False
            signed = await client.post(f"/w/signin/{token}", data={"csrf": csrf.group(1)},
                                       headers=pre, allow_redirects=False)
            assert signed.status == 303  # the link was not spent by the refusal
