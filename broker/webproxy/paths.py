"""Where a proxied request may go, and how device URLs are shown under the proxy.

Pure functions, no I/O. The upstream URL is built only from the device's ``web_url`` and a
path :func:`check_path` accepted: its one canonical spelling (no needless escapes, strict
UTF-8), with no dot segments however encoded, no backslashes, ``;`` parameters, double
encoding, empty segments or control characters. The browser sees
the device under ``/w/<grant>/``: :func:`DeviceOrigin.browser_path` maps device paths there,
and Location headers and links in HTML pages are rewritten with it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urlsplit

from yarl import URL

DEFAULT_PORTS = {"http": 80, "https": 443}
_RAW_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\;]|[^\x00-\x7f]")
_DECODED_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\\;]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})?")
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
# Characters a percent-escape may never stand for: unreserved ones (never need escaping, so
# an escape is only there to hide them), and the path's own separators.
_NEVER_ESCAPED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                           "-._~/\\;")


class PathRefused(ValueError):
    """A request path that could reach something other than the device's web UI."""


@dataclass(frozen=True)
class DeviceOrigin:
    scheme: str
    host: str
    port: int
    base_path: str  # always ends with "/"

    @classmethod
    def from_url(cls, web_url: str) -> DeviceOrigin:
        parts = urlsplit(web_url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"web URL {web_url!r} is not an http(s) URL with a host")
        if parts.username or parts.password:
            raise ValueError(f"web URL {web_url!r} must not carry a user or password")
        if parts.query or parts.fragment:
            raise ValueError(f"web URL {web_url!r} must not have a query or fragment")
        try:
            port = parts.port or DEFAULT_PORTS[parts.scheme]
        except ValueError:
            raise ValueError(f"web URL {web_url!r} has a bad port") from None
        base = parts.path or "/"
        if not base.endswith("/"):
            base += "/"
        check_path(base.lstrip("/"))
        return cls(parts.scheme, parts.hostname.lower(), port, base)

    @property
    def https(self) -> bool:
        return self.scheme == "https"

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS[self.scheme] == self.port else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def upstream(self, rest: str, query: str = "") -> URL:
        """The device URL for ``rest`` (the raw path after ``/w/<grant>/``, already
        checked by :func:`check_path`) and the raw query string."""
        url = URL.build(scheme=self.scheme, host=self.host, port=self.port,
                        path=self.base_path + rest, query_string=query, encoded=True)
        if url.host != self.host or url.port != self.port or url.scheme != self.scheme:
            raise PathRefused("the request would leave the device")  # defence in depth
        return url

    def websocket(self, url: URL) -> URL:
        return url.with_scheme("wss" if self.https else "ws")

    def owns(self, scheme: str, netloc: str) -> bool:
        """Whether ``scheme://netloc`` is this device (``ws``/``wss`` included)."""
        scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
        if scheme != self.scheme:
            return False
        try:
            parts = urlsplit(f"{scheme}://{netloc}")
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError:
            return False
        return (parts.hostname or "") == self.host and port == self.port

    def browser_path(self, device_path: str, prefix: str) -> str:
        """A device path (``/ui/status``) as the browser sees it (``/w/7/status``)."""
        if device_path.startswith(self.base_path):
            return prefix + device_path[len(self.base_path):]
        if device_path + "/" == self.base_path:
            return prefix
        return prefix + device_path.lstrip("/")  # outside the base: best effort


def check_path(rest: str) -> str:
    """``rest`` (the raw path after the grant's prefix) unchanged if it may be sent to the
    device, else :class:`PathRefused`.

    Only one spelling of a path is accepted, so the device cannot read it differently from
    this check: every percent-escape must be needed (``%2e``, ``%2F``, ``%5c``, ``%3b``,
    ``%00`` and ``%25`` before two hex digits are refused, whatever their case), and the
    escapes must decode as strict UTF-8 (overlong forms such as ``%c0%ae`` are not UTF-8).
    The decoded path must then hold no control character, backslash, ``;`` (path parameters:
    ``..;/``), empty segment (``//``) or segment of only dots (``..``, ``...``), also after
    Unicode compatibility folding (fullwidth ``\uff0e\uff0e``)."""
    if _RAW_FORBIDDEN.search(rest):
        raise PathRefused("backslashes, ';', spaces and control characters are not allowed"
                          " in paths")
    for escape in _ESCAPE.finditer(rest):
        if escape.group(1) is None:
            raise PathRefused("a '%' in the path is not followed by two hex digits")
        byte = int(escape.group(1), 16)
        if byte < 0x20 or byte == 0x7f or chr(byte) in _NEVER_ESCAPED or (
                byte == 0x25 and _HEX2.match(rest, escape.end())):
            raise PathRefused("needless or dangerous percent-encoding (dots, slashes,"
                              " backslashes, ';', NUL, double encoding) in the path")
    try:
        decoded = unquote_to_bytes(rest).decode("utf-8", errors="strict")
    except UnicodeDecodeError:
        raise PathRefused("the path is not valid UTF-8 once percent-decoded") from None
    for form in (decoded, unicodedata.normalize("NFKC", decoded)):
        if _DECODED_FORBIDDEN.search(form):
            raise PathRefused("backslashes, ';' and control characters are not allowed in"
                              " paths, however encoded")
        segments = form.split("/")
        if any(not segment.strip(". ") for segment in segments[:-1]) or (
                segments[-1] and not segments[-1].strip(". ")):
            raise PathRefused("empty ('//'), '.' and '..' path segments are not allowed")
    return rest


def split_target(raw_target: str, prefix: str) -> tuple[str, str]:
    """(raw path after ``prefix``, raw query) of an origin-form request target."""
    path, _, query = raw_target.partition("?")
    if not path.startswith(prefix):
        raise PathRefused("the request target is not under this grant's prefix")
    return path[len(prefix):], query


def rewrite_location(value: str, origin: DeviceOrigin, prefix: str) -> str:
    """A Location (or Content-Location, Refresh URL) from the device, for the browser."""
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        if not origin.owns(parts.scheme or origin.scheme, parts.netloc):
            return value  # another site: the browser goes there without the broker
        path = parts.path or "/"
    elif value.startswith("/"):
        path = parts.path
    else:
        return value  # relative: resolves under the prefix by itself
    rewritten = origin.browser_path(path, prefix)
    if parts.query:
        rewritten += "?" + parts.query
    if parts.fragment:
        rewritten += "#" + parts.fragment
    return rewritten


_LINK_ATTRIBUTE = re.compile(
    r"""(?P<lead>[\s"'](?:href|src|action|formaction|poster|data|background|content)\s*=\s*)
        (?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>[^\s"'>]+))""",
    re.IGNORECASE | re.VERBOSE)
_REFRESH = re.compile(r"^(\s*\d+\s*;\s*url\s*=\s*)(.*)$", re.IGNORECASE | re.DOTALL)


def rewrite_html(text: str, origin: DeviceOrigin, prefix: str, ws_origin: str) -> str:
    """Links in an HTML page that point at the device by absolute URL or absolute path,
    rewritten to go through the proxy (``ws_origin`` is ``wss://broker-host`` for
    WebSocket URLs). Relative links need no change."""

    def link(url: str) -> str:
        stripped = url.strip()
        refresh = _REFRESH.match(stripped)
        if refresh:
            return refresh.group(1) + link(refresh.group(2))
        lowered = stripped.lower()
        if lowered.startswith(("ws://", "wss://")):
            parts = urlsplit(stripped)
            if origin.owns(parts.scheme, parts.netloc):
                return ws_origin + rewrite_location(
                    stripped.replace(parts.scheme, origin.scheme, 1), origin, prefix)
            return url
        if lowered.startswith(("http://", "https://", "//")) or (
                stripped.startswith("/") and not stripped.startswith("//")):
            return rewrite_location(stripped, origin, prefix)
        return url

    def replace(match: re.Match[str]) -> str:
        for group, quote in (("dq", '"'), ("sq", "'"), ("bare", "")):
            value = match.group(group)
            if value is not None:
                return f"{match.group('lead')}{quote}{link(value)}{quote}"
        return match.group(0)  # pragma: no cover (one of the groups always matched)

    return _LINK_ATTRIBUTE.sub(replace, text)
