"""The broker's HTTP client towards one device, and its login there.

One :class:`aiohttp.ClientSession` per web session: its cookie jar holds the device's session
cookies (they never reach the technician's browser), its connector trusts exactly what the
device's settings say, and redirects are never followed (the browser follows them, through
the proxy). Basic and Digest credentials are added by aiohttp (``BasicAuth``,
``DigestAuthMiddleware``); a form login is posted here before the first proxied request.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import structlog
from yarl import URL

from broker.errors import DeviceError
from broker.services.device_web import WebTarget
from broker.services.sessions import DeviceLogin

log = structlog.get_logger("broker.webproxy")
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 300
_HIDDEN_INPUT = re.compile(r"<input\b[^>]*>", re.IGNORECASE)
_ATTR = re.compile(r"""([a-zA-Z_:][-a-zA-Z0-9_:.]*)\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+))""")
_PASSWORD_FIELD = re.compile(r"""<input\b[^>]*type\s*=\s*["']?password""", re.IGNORECASE)

Recorder = Callable[[str, URL, dict[str, str], dict[str, str], aiohttp.ClientResponse, bytes],
                    Awaitable[None]]


def open_client(target: WebTarget, login: DeviceLogin | None) -> aiohttp.ClientSession:
    auth = target.settings.auth
    options: dict[str, Any] = {}
    if auth in ("basic", "digest", "form"):
        if login is None or login.kind != "password":
            raise DeviceError(f"device {target.device}: its web login ({auth}) needs a password"
                              " credential in the vault")
        password = login.secret.decode("utf-8", "replace")
        if auth == "basic":
            pair = base64.b64encode(f"{login.user}:{password}".encode()).decode("ascii")
            options["headers"] = {"Authorization": f"Basic {pair}"}
        elif auth == "digest":
            options["middlewares"] = (aiohttp.DigestAuthMiddleware(login.user, password),)
    connector = aiohttp.TCPConnector(ssl=target.tls(), limit=32, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT,
                                      sock_read=READ_TIMEOUT),
        **options)


def hidden_inputs(page: str) -> dict[str, str]:
    """The hidden fields of a login page (CSRF tokens and the like), to post back."""
    fields = {}
    for tag in _HIDDEN_INPUT.findall(page):
        attrs = {m.group(1).lower(): html.unescape(next(g for g in m.groups()[1:] if g is not None))
                 for m in _ATTR.finditer(tag)}
        if attrs.get("type", "").lower() == "hidden" and attrs.get("name"):
            fields[attrs["name"]] = attrs.get("value", "")
    return fields


async def form_login(client: aiohttp.ClientSession, target: WebTarget, login: DeviceLogin,
                     record: Recorder) -> None:
    """Post the device's login form with the vaulted credential, as the device expects it.

    Success: the device answers below 400, and neither shows a password field again nor
    redirects back to the form. The exchange is recorded with the password redacted."""
    settings, origin = target.settings, target.origin
    assert settings.form_path is not None
    url = URL.build(scheme=origin.scheme, host=origin.host, port=origin.port,
                    path=settings.form_path, encoded=True)
    headers = {"Accept": "text/html", "Accept-Encoding": "identity", "Origin": origin.origin,
               "Referer": str(url)}
    try:
        async with client.get(url, headers=headers, allow_redirects=False) as page:
            body = await page.read()
            await record("GET", url, headers, {}, page, body)
            fields = hidden_inputs(body.decode("utf-8", "replace")) if page.status < 400 else {}
        fields[settings.form_user_field] = login.user
        fields[settings.form_password_field] = login.secret.decode("utf-8", "replace")
        shown = {**fields, settings.form_password_field: "[redacted]"}
        async with client.post(url, data=fields, headers=headers,
                               allow_redirects=False) as answer:
            body = await answer.read()
            await record("POST", url, headers, shown, answer, body)
            location = answer.headers.get("Location", "")
            failed = (answer.status >= 400 or URL(location).path == settings.form_path
                      or (answer.status < 300 and _PASSWORD_FIELD.search(
                          body.decode("utf-8", "replace")) is not None))
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.warning("device web login unreachable", device=target.device,
                    url=str(url), error=f"{exc.__class__.__name__}: {exc}")  # not for browsers
        raise DeviceError(f"device {target.device}: its web UI could not be reached for the"
                          f" login ({exc.__class__.__name__})") from None
    if failed:
        raise DeviceError(f"device {target.device}: the web login with the vaulted credential"
                          f" failed (HTTP {answer.status})")
