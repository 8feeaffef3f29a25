"""Where device web UIs are served: an origin of their own, never the portal's.

``[webproxy] public_url`` (default: the portal's scheme and host with the ``[webproxy]
listen`` port) is the device origin; with ``grant_host`` each grant has a host name of its
own (``7.devices.example.org``) on that scheme and port, so one grant's pages cannot read
another's. Pure functions of the settings, no I/O.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from broker.config import Settings
from broker.webproxy.paths import DEFAULT_PORTS


def _netloc(host: str, scheme: str, port: int | None) -> str:
    host = f"[{host}]" if ":" in host else host
    return host if port is None or port == DEFAULT_PORTS[scheme] else f"{host}:{port}"


def device_base_url(settings: Settings) -> str:
    """The device origin without a grant host: ``https://broker.example.org:8444``."""
    if settings.webproxy.public_url:
        return settings.webproxy.public_url
    portal = urlsplit(settings.broker.public_url)
    port = int(settings.webproxy.listen.rpartition(":")[2])
    return f"{portal.scheme}://{_netloc(portal.hostname or 'localhost', portal.scheme, port)}"


def weblogin_command(settings: Settings, device: str | None = None) -> str:
    """The command a technician types for a sign-in link, with this broker's SSH host and
    port filled in (the technician's own name is theirs to fill: a page an anonymous browser
    can open does not say who holds a grant)."""
    host = urlsplit(settings.broker.public_url).hostname or "localhost"
    port = int(settings.ssh.listen.rpartition(":")[2])
    return (f"ssh -p {port} YOUR-NAME@{host} weblogin {device or 'DEVICE'}"
            if port != 22 else f"ssh YOUR-NAME@{host} weblogin {device or 'DEVICE'}")


def grant_origin(settings: Settings, grant_id: int) -> str:
    """The origin that serves ``grant_id``'s device pages."""
    base = device_base_url(settings)
    if not settings.webproxy.grant_host:
        return base
    parts = urlsplit(base)
    host = settings.webproxy.grant_host.replace("{grant}", str(int(grant_id)))
    return f"{parts.scheme}://{_netloc(host, parts.scheme, parts.port)}"


def signin_url(settings: Settings, grant_id: int, token: str) -> str:
    return f"{grant_origin(settings, grant_id)}/w/signin/{token}"


def grant_of_host(settings: Settings, host: str) -> int | None:
    """With ``grant_host``, the grant a request's Host header names (None: not a grant
    host). Ports are ignored here: the listener decides which port it answers."""
    pattern = settings.webproxy.grant_host
    if not pattern:
        return None
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.lower().rstrip(".")
    suffix = pattern.removeprefix("{grant}")
    label = name.removesuffix(suffix)
    if label == name or not label.isascii() or not label.isdigit() or label != str(int(label)):
        return None
    return int(label)


_ADDRESS = re.compile(
    r"[a-z][a-z0-9+.-]*://\S+"  # URLs
    r"|\[?[0-9a-f]*:[0-9a-f:]*:[0-9a-f.:]*\]?(?::\d+)?"  # IPv6 (with a port)
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+|'?,\s*\d{1,5})?\b"  # IPv4 (with a port)
    r"|\b(?:host|hostname)\s+\S+"  # "Cannot connect to host pump.local:443"
    r"|\b[a-z0-9-]+(?:\.[a-z0-9-]+)+:\d+\b",  # name:port
    re.IGNORECASE)


def without_addresses(text: str) -> str:
    """``text`` for a browser page: URLs, IP addresses, host:port and 'host NAME' taken out
    (the device's own address is for the audit log only)."""
    return _ADDRESS.sub("[address withheld]", text)
