"""The request headers the device gets: the browser's end-to-end headers, minus everything
that names a proxy, a client address, a host or a credential, plus the few the broker builds
itself from its own settings (never from what the client sent).

Dropped: hop-by-hop headers (and any the client's ``Connection`` names), ``Host``, the
broker's cookies and the client's ``Authorization`` (the broker logs in to the device itself),
``Forwarded``/``Via``/``X-Forwarded-*`` and their relatives (``X-Real-IP``,
``X-Original-URL`` ...), WebSocket handshake headers (aiohttp builds its own). ``Origin`` and
``Referer`` are rewritten to the device's own URLs.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

from multidict import CIMultiDict

from broker.webproxy.paths import DeviceOrigin

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade",
                        "proxy-connection"})
DROP = HOP_BY_HOP | {
    "host", "cookie", "cookie2", "authorization", "content-length", "accept-encoding",
    "origin", "referer", "forwarded", "via", "x-real-ip", "x-client-ip", "client-ip",
    "true-client-ip", "cf-connecting-ip", "x-cluster-client-ip", "x-original-url",
    "x-rewrite-url", "x-original-host", "x-host", "x-http-host-override",
    "x-http-method-override", "x-method-override", "x-proxyuser-ip", "fastly-client-ip",
    "x-envoy-external-address"}
DROP_PREFIXES = ("x-forwarded-", "x-forwarded", "sec-websocket-", "proxy-", "x-broker-")


def dropped(name: str, named_by_connection: set[str]) -> bool:
    lowered = name.lower()
    return (lowered in DROP or lowered in named_by_connection
            or lowered.startswith(DROP_PREFIXES))


def upstream_headers(incoming: Mapping[str, str], origin: DeviceOrigin, prefix: str,
                     public_url: str, client_addr: str) -> CIMultiDict[str]:
    """Headers for the device. ``public_url`` is the device origin the browser uses (from the
    broker's settings), ``client_addr`` the peer address of the connection."""
    named = {token.strip().lower() for token in incoming.get("Connection", "").split(",")}
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        if not dropped(name, named):
            headers.add(name, value)
    if "Origin" in incoming:
        headers["Origin"] = origin.origin
    referer = urlsplit(incoming.get("Referer", ""))
    if referer.path.startswith(prefix):
        headers["Referer"] = (origin.origin + origin.base_path + referer.path[len(prefix):]
                              + (f"?{referer.query}" if referer.query else ""))
    public = urlsplit(public_url)
    headers["Accept-Encoding"] = "identity"  # so recordings and link rewriting see plain bodies
    headers["X-Forwarded-For"] = client_addr
    headers["X-Forwarded-Proto"] = public.scheme
    headers["X-Forwarded-Host"] = public.netloc
    headers["X-Forwarded-Prefix"] = prefix.rstrip("/")
    return headers
