"""The core sections: ``[broker]``, ``[ssh]``, ``[http]``, ``[webproxy]``, ``[recording]``,
``[policy]``, ``[vault]``, ``[log]``."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from broker.config._base import _check_listen, _duration_text, _Section

DEFAULT_CONFIG = "broker.toml"
MAX_WORKERS = 256


def default_workers(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """``[broker] workers`` unset: one broker process per CPU core this process may use:
    the cores it may run on, fewer if its cgroup's CPU quota (a container's CPU limit) is
    lower, rounded up."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, -(-int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, min(MAX_WORKERS, cores))


class BrokerSection(_Section):
    public_url: str = "https://localhost:8443"
    database_url: str = "sqlite:///data/broker.db"
    data_dir: str = "data"
    node: str = ""  # this node's name in a cluster; empty means the host name
    timezone: str = "UTC"  # pages show times here (IANA name, e.g. Europe/Berlin), UTC on hover
    # SIGTERM: live sessions may go on this long (no new ones) before they are cut
    drain_timeout: str = "5m"
    # The database unreachable: a live session within its grant goes on this long without its
    # revocation being checked, then it is cut (new sessions are refused at once)
    fail_closed_after: str = "15s"
    # broker processes sharing the listeners (SO_REUSEPORT) under one supervisor; 1: one
    # process, as before workers existed
    workers: int = Field(default_factory=lambda: default_workers())
    # the event loop under the server: "uvloop" (libuv, the default) or "asyncio" (the
    # standard library's, for comparison or where uvloop is not installed)
    event_loop: str = "uvloop"

    _drain = field_validator("drain_timeout")(
        classmethod(lambda cls, v: _duration_text(v, at_most="1d", at_least="1s")))
    _fail_closed = field_validator("fail_closed_after")(
        classmethod(lambda cls, v: _duration_text(v, at_most="1h", at_least="1s")))

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: object) -> int:
        text = str(value).strip() if isinstance(value, int | str) and not isinstance(
            value, bool) else ""
        if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
            raise ValueError(f"expected a whole number of processes from 1 to {MAX_WORKERS}"
                             f" (1: a single process), got {value!r}")
        return int(text)

    @field_validator("event_loop")
    @classmethod
    def _loop(cls, value: str) -> str:
        if value not in ("uvloop", "asyncio"):
            raise ValueError(f"expected \"uvloop\" or \"asyncio\", got {value!r}")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"expected an IANA time zone such as Europe/Berlin or"
                             f" America/New_York, got {value!r}") from None
        return value

    @field_validator("node")
    @classmethod
    def _node(cls, value: str) -> str:
        if len(value) > 100 or any(not (c.isalnum() or c in "._-") for c in value):
            raise ValueError(f"expected a short name of letters, digits, '.', '_', '-', got"
                             f" {value!r}")
        return value

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s) URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _db(cls, value: str) -> str:
        scheme = value.split("://", 1)[0]
        if "://" not in value or scheme not in (
            "sqlite", "sqlite+aiosqlite", "postgresql", "postgresql+asyncpg"
        ):
            raise ValueError(
                f"expected sqlite:///PATH or postgresql+asyncpg://USER@HOST/DB, got {value!r}"
            )
        return value


class SSHSection(_Section):
    listen: str = "0.0.0.0:2222"
    proxy_protocol: bool = False
    proxy_trusted: tuple[str, ...] = ()  # CIDRs allowed to send PROXY headers; empty = any
    # Offered to technicians' clients. AES-GCM is one C call per packet in asyncssh; offering
    # chacha20 or CTR would let OpenSSH clients pick them first (their preference wins).
    ciphers: tuple[str, ...] = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
    host_key: str = "data/ssh_host_ed25519_key"
    user_ca: str = "data/user_ca"
    login_grace: int = Field(default=60, ge=1, le=3600)
    max_auth_tries: int = Field(default=6, ge=1, le=100)
    # refusals audited in full per source address and kind per minute (the rest are counted)
    refusal_burst: int = Field(default=5, ge=1, le=100000)
    # seconds a device connection stays open after a session ended cleanly, for the same
    # technician's next session on that device (ControlPersist); 0: each session logs in anew
    device_keepalive: int = Field(default=10, ge=0, le=600)

    _listen = field_validator("listen")(classmethod(lambda cls, v: _check_listen(v)))

    @field_validator("ciphers")
    @classmethod
    def _ciphers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from asyncssh.encryption import get_encryption_algs

        known = {name.decode() for name in get_encryption_algs()}
        unknown = [name for name in value if name not in known]
        if unknown or not value:
            raise ValueError(f"unknown cipher {unknown[0]!r}" if unknown else "no cipher given")
        return value

    @field_validator("proxy_trusted")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an address or CIDR network") from None
        return value


class HTTPSection(_Section):
    listen: str = "0.0.0.0:8443"
    tls_cert: str = "data/tls.crt"  # both empty: plain HTTP (behind a TLS-terminating proxy)
    tls_key: str = "data/tls.key"
    secret_key: str = "data/web.key"  # signs approval links, cookies and CSRF tokens
    max_body: int = Field(default=1024 * 1024, ge=1024)  # bytes, for the portal and the API
    # Both listeners (portal and device origin): a TLS handshake, and a request head (also
    # the next one on a kept-alive connection), must complete within these.
    handshake_timeout: str = "10s"
    head_timeout: str = "10s"

    _listen = field_validator("listen")(classmethod(lambda cls, v: _check_listen(v)))
    _timeouts = field_validator("handshake_timeout", "head_timeout")(
        classmethod(lambda cls, v: _duration_text(v, at_most="5m", at_least="1s")))

    @model_validator(mode="after")
    def _tls_pair(self) -> HTTPSection:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must both be set, or both be empty")
        return self


_GRANT_HOST = re.compile(r"\{grant\}((?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+)")


class WebProxySection(_Section):
    """The device web UIs' own origin (never the portal's): a listener of its own, and
    optionally one host name per grant (wildcard DNS and certificate)."""

    listen: str = "0.0.0.0:8444"
    public_url: str = ""  # empty: [broker] public_url's scheme and host, this listen port
    grant_host: str = ""  # e.g. "{grant}.devices.broker.example"; empty: one shared origin
    tls_cert: str = ""  # both empty: the [http] pair
    tls_key: str = ""

    _listen = field_validator("listen")(classmethod(lambda cls, v: _check_listen(v)))

    @field_validator("public_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname
                      or parts.path.strip("/") or parts.query or parts.fragment):
            raise ValueError(f"expected an http(s) URL of a host (no path), or nothing, got"
                             f" {value!r}")
        return value.rstrip("/")

    @field_validator("grant_host")
    @classmethod
    def _grant_host(cls, value: str) -> str:
        value = value.lower()
        if value and not _GRANT_HOST.fullmatch(value):
            raise ValueError(f"expected a host name whose first label is {{grant}}, like"
                             f" \"{{grant}}.devices.broker.example\", got {value!r}")
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> WebProxySection:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key must both be set, or both be empty")
        return self


class RecordingSection(_Section):
    dir: str = "recordings"
    retain_days: int = Field(default=2555, ge=1)
    signing_key: str = "data/recording_ed25519.pem"
    # Web sessions (HAR): bodies up to this many bytes go inside the HAR, larger ones into
    # files named by their SHA-256 next to it.
    har_body_limit: int = Field(default=1024 * 1024, ge=0)


class PolicySection(_Section):
    dir: str = "policies"


class VaultSection(_Section):
    key_file: str = "data/vault.key"


class LogSection(_Section):
    file: str = "data/broker.log"
    level: str = "info"

    @field_validator("level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.lower() not in ("debug", "info", "warning", "error"):
            raise ValueError(f"expected debug, info, warning or error, got {value!r}")
        return value.lower()
