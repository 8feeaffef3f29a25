"""HAR 1.2 entries for what the proxy relays (the writer is :mod:`broker.recording.har`).

``request.url`` is the device URL the broker requested; ``_brokerUrl`` the URL the browser
used. Credentials never enter a recording: ``Authorization``, ``Cookie`` and ``Set-Cookie``
values are replaced by ``[redacted]``, and so is the password of an injected form login.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from broker.recording.har import body_fields, iso, name_values

REDACTED = "[redacted]"
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


def headers_of(pairs: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return name_values((name, REDACTED if name.lower() in SECRET_HEADERS else value)
                       for name, value in pairs)


def _timings(wait_ms: float, receive_ms: float, send_ms: float = 0.0) -> dict[str, float]:
    return {"blocked": -1, "dns": -1, "connect": -1, "ssl": -1, "send": round(send_ms, 3),
            "wait": round(wait_ms, 3), "receive": round(receive_ms, 3)}


def _version(version: Any) -> str:
    return f"HTTP/{version.major}.{version.minor}" if version is not None else "HTTP/1.1"


def request_part(method: str, url: URL, headers: Iterable[tuple[str, str]],
                 body: Mapping[str, Any] | None, mime: str,
                 params: Mapping[str, str] | None = None) -> dict[str, Any]:
    part: dict[str, Any] = {
        "method": method, "url": str(url), "httpVersion": "HTTP/1.1", "cookies": [],
        "headers": headers_of(headers), "queryString": name_values(url.query.items()),
        "headersSize": -1, "bodySize": body["size"] if body else 0,
    }
    if params is not None:
        part["postData"] = {"mimeType": mime, "params": name_values(params.items()),
                            "text": "&".join(f"{k}={v}" for k, v in params.items())}
    elif body and body["size"]:
        part["postData"] = body_fields(body, mime)
    return part


def response_part(status: int, reason: str | None, version: Any,
                  headers: CIMultiDictProxy[str] | Mapping[str, str],
                  body: Mapping[str, Any] | None) -> dict[str, Any]:
    mime = headers.get("Content-Type", "")
    content: dict[str, Any] = {"size": body["size"] if body else 0}
    if body and body["size"]:
        content.update(body_fields(body, mime))
    else:
        content["mimeType"] = mime or "x-unknown"
    return {"status": status, "statusText": reason or "", "httpVersion": _version(version),
            "cookies": [], "headers": headers_of(headers.items()), "content": content,
            "redirectURL": headers.get("Location", ""), "headersSize": -1,
            "bodySize": body["size"] if body else 0}


def http_entry(started: datetime, request: dict[str, Any], response: dict[str, Any],
               wait_ms: float, receive_ms: float, browser_url: str, **extra: Any
               ) -> dict[str, Any]:
    timings = _timings(wait_ms, receive_ms)
    return {"startedDateTime": iso(started), "time": round(wait_ms + receive_ms, 3),
            "request": request, "response": response, "cache": {}, "timings": timings,
            "_brokerUrl": browser_url, **extra}


def login_entry(started: datetime, method: str, url: URL, headers: Mapping[str, str],
                form: Mapping[str, str], answer: aiohttp.ClientResponse,
                body: Mapping[str, Any]) -> dict[str, Any]:
    """The broker's own form login at the device (credential injection), redacted."""
    request = request_part(method, url, headers.items(), None,
                           "application/x-www-form-urlencoded",
                           params=form if method == "POST" else None)
    response = response_part(answer.status, answer.reason, answer.version, answer.headers,
                             body)
    return http_entry(started, request, response, 0.0, 0.0, "", _broker="credential-injection")


def websocket_entry(started: datetime, url: URL, sent_headers: Iterable[tuple[str, str]],
                    status: int, reason: str | None, response_headers: Mapping[str, str],
                    messages: list[dict[str, Any]], count: int, duration_ms: float,
                    browser_url: str, close: str) -> dict[str, Any]:
    request = request_part("GET", url, sent_headers, None, "")
    response = response_part(status, reason, None, response_headers, None)
    return http_entry(started, request, response, duration_ms, 0.0, browser_url,
                      _resourceType="websocket", _webSocketMessages=messages,
                      _webSocketMessageCount=count, _webSocketClose=close)
