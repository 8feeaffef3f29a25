"""Settings: ``broker.toml`` plus ``BROKER_<SECTION>_<KEY>`` environment overrides.

Relative paths in the file are relative to the file's directory. Every problem is reported as
one line naming the file, the key and what is wrong.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from broker.errors import ConfigError

DEFAULT_CONFIG = "broker.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return value


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

    _drain = field_validator("drain_timeout")(
        classmethod(lambda cls, v: _duration_text(v, at_most="1d", at_least="1s")))
    _fail_closed = field_validator("fail_closed_after")(
        classmethod(lambda cls, v: _duration_text(v, at_most="1h", at_least="1s")))

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


def _duration_text(value: str, *, at_most: str | None = None, at_least: str | None = None
                   ) -> str:
    from broker.domain.durations import DurationError, parse_duration

    try:
        parsed = parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None
    if at_most is not None and parsed > parse_duration(at_most):
        raise ValueError(f"{value!r} is longer than the most allowed, {at_most}")
    if at_least is not None and parsed < parse_duration(at_least):
        raise ValueError(f"{value!r} is shorter than the least allowed, {at_least}")
    return value


class ApprovalsSection(_Section):
    link_ttl: str = "4h"  # how long a personal approval link stays valid

    _ttl = field_validator("link_ttl")(
        classmethod(lambda cls, v: _duration_text(v, at_most="7d")))


class NotifySection(_Section):
    """Webhook and e-mail notifications (``broker/approvals/notify``); empty = channel off."""

    webhook_url: str = ""
    webhook_secret_file: str = "data/webhook.key"  # 0600; HMAC-SHA256 key for the signature
    webhook_timeout: str = "10s"
    smtp_host: str = ""
    smtp_port: int = Field(default=25, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_user: str = ""
    smtp_password_env: str = ""  # name of the environment variable holding the password
    smtp_timeout: str = "20s"
    mail_from: str = "broker@localhost"
    templates_dir: str = "notify-templates"  # files here override the shipped templates
    max_attempts: int = Field(default=8, ge=1, le=100)
    retry_base: str = "10s"  # first retry after this, doubling each time
    retry_max: str = "1h"

    _durations = field_validator("webhook_timeout", "smtp_timeout", "retry_base", "retry_max")(
        classmethod(lambda cls, v: _duration_text(v)))

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname):
            raise ValueError(f"expected an http(s) URL or nothing, got {value!r}")
        return value

    @field_validator("mail_from")
    @classmethod
    def _from(cls, value: str) -> str:
        if "@" not in value or any(c in value for c in "\r\n"):
            raise ValueError(f"expected an e-mail address, got {value!r}")
        return value


# syslog facilities by name (RFC 5424 section 6.2.1); a number 0-23 is accepted too
SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
    "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14,
    "solaris-cron": 15, **{f"local{n}": 16 + n for n in range(8)},
}


class SiemSection(_Section):
    """The audit stream to the hospital's SIEM (``broker/siem``); empty syslog_url = off."""

    syslog_url: str = ""  # tcp://HOST:PORT (RFC 6587 octet counting) or tls://HOST:PORT (5425)
    format: str = "ocsf"  # ocsf (JSON) | cef
    ca_file: str = ""  # tls:// only: trust this CA (PEM); empty = the system's trust store
    cert_file: str = ""  # tls:// only: client certificate (PEM), with key_file
    key_file: str = ""
    app_name: str = "vendor-access-broker"
    facility: str = "authpriv"
    timeout: str = "10s"  # connecting, and writing a batch
    retry_base: str = "1s"  # first reconnect after this, doubling each time
    retry_max: str = "1m"

    _durations = field_validator("timeout", "retry_base", "retry_max")(
        classmethod(lambda cls, v: _duration_text(v)))

    @field_validator("syslog_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if (parts.scheme not in ("tcp", "tls") or not parts.hostname or port == -1
                or parts.path not in ("", "/") or parts.query):
            hint = (" (UDP is not offered: it drops audit events silently)"
                    if parts.scheme == "udp" else "")
            raise ValueError(f"expected tcp://HOST:PORT or tls://HOST:PORT, got {value!r}{hint}")
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value.lower() not in ("ocsf", "cef"):
            raise ValueError(f"expected ocsf or cef, got {value!r}")
        return value.lower()

    @field_validator("app_name")
    @classmethod
    def _app(cls, value: str) -> str:
        # RFC 5424 APP-NAME: 1-48 printable US-ASCII characters, no space
        if not 1 <= len(value) <= 48 or any(not 33 <= ord(c) <= 126 for c in value):
            raise ValueError(f"expected 1-48 printable ASCII characters without spaces, got"
                             f" {value!r}")
        return value

    @field_validator("facility", mode="before")
    @classmethod
    def _facility(cls, value: object) -> str:
        text = str(value).strip().lower()
        if text in SYSLOG_FACILITIES or (text.isdigit() and 0 <= int(text) <= 23):
            return text
        raise ValueError(f"expected a syslog facility name (auth, authpriv, local0 ... local7,"
                         f" ...) or a number 0-23, got {value!r}")

    @model_validator(mode="after")
    def _tls_files(self) -> SiemSection:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("cert_file and key_file must both be set, or both be empty")
        if not self.syslog_url.startswith("tls://"):
            for key in ("ca_file", "cert_file", "key_file"):
                if getattr(self, key):
                    raise ValueError(f"{key} is set but syslog_url is not a tls:// URL")
        return self

    @property
    def facility_code(self) -> int:
        return int(self.facility) if self.facility.isdigit() else SYSLOG_FACILITIES[self.facility]


class OIDCSection(_Section):
    """Staff single sign-on with the hospital's OpenID Connect provider
    (``broker/http/staff/oidc``); empty issuer = off."""

    issuer: str = ""  # e.g. https://login.microsoftonline.com/<tenant>/v2.0
    provider_name: str = ""  # on the button: "Sign in with <provider_name>" (default: host)
    client_id: str = ""
    # name of the environment variable holding the secret (not BROKER_*: those are overrides)
    client_secret_env: str = ""
    scopes: str = "openid email profile groups"
    group_claim: str = "groups"  # the ID token claim listing the user's groups
    role_claim: str = ""  # optional: a claim naming the role directly (approver|auditor|admin)
    username_claim: str = "preferred_username"  # the staff name (else email, else sub)
    redirect_url: str = ""  # empty: [broker] public_url + /staff/oidc/callback
    local_login: bool = True  # local accounts (break-glass); false: password form gone
    roles: dict[str, tuple[str, ...]] = {}  # [oidc.roles] admin = ["biomed-admins"], ...

    @field_validator("issuer", "redirect_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if value and (parts.scheme not in ("http", "https") or not parts.hostname
                      or parts.query or parts.fragment):
            raise ValueError(f"expected an http(s) URL without query or fragment, got {value!r}")
        if value and parts.scheme == "http" and parts.hostname not in (
                "localhost", "127.0.0.1", "::1"):
            raise ValueError(f"expected https (http only on a loopback address), got {value!r}")
        return value.rstrip("/") if value else value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: str) -> str:
        if "openid" not in value.split():
            raise ValueError(f"the scopes must include 'openid', got {value!r}")
        return value

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
        for role in value:
            if role not in ("approver", "auditor", "admin"):
                raise ValueError(f"[oidc.roles] {role}: expected approver, auditor or admin")
        return value

    @property
    def display_name(self) -> str:
        """The provider's name on the sign-in button."""
        return self.provider_name or urlsplit(self.issuer).hostname or "single sign-on"

    @model_validator(mode="after")
    def _complete(self) -> OIDCSection:
        if self.issuer and not self.client_id:
            raise ValueError("client_id is required when issuer is set")
        if self.issuer and not (self.roles or self.role_claim):
            raise ValueError("[oidc.roles] (or role_claim) is required when issuer is set: "
                             "no group would map to a role")
        if self.client_secret_env.upper().startswith("BROKER_"):
            raise ValueError("client_secret_env: not a BROKER_* name (those override settings)")
        if not self.issuer and not self.local_login:
            raise ValueError("local_login = false needs an issuer: nobody could sign in")
        return self


class VendorsSection(_Section):
    """The technician lifecycle (``broker/services/vendors.py``)."""

    # a technician with no successful login for this many days is disabled by the scheduler
    inactive_days: int = Field(default=90, ge=1)


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


class MetricsSection(_Section):
    """``GET /metrics`` (Prometheus): on the portal's listener, or on ``listen`` when set;
    with ``token_env`` or ``token_file`` a bearer token is required."""

    listen: str = ""  # HOST:PORT of a listener of its own (the portal's TLS pair); empty: portal
    token_env: str = ""  # the name of an environment variable holding the bearer token
    token_file: str = ""  # or a file holding it (relative to the config file)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        return _check_listen(value) if value else value

    @field_validator("token_env")
    @classmethod
    def _env(cls, value: str) -> str:
        if value and not _ENV_NAME.match(value):
            raise ValueError(f"expected an environment variable name, got {value!r}")
        if value.upper().startswith("BROKER_"):
            raise ValueError(f"{value!r}: not a BROKER_* name (those override settings)")
        return value

    @model_validator(mode="after")
    def _one_token(self) -> MetricsSection:
        if self.token_env and self.token_file:
            raise ValueError("token_env and token_file are both set: set one of them")
        return self


class Settings(_Section):
    broker: BrokerSection = BrokerSection()
    ssh: SSHSection = SSHSection()
    http: HTTPSection = HTTPSection()
    webproxy: WebProxySection = WebProxySection()
    recording: RecordingSection = RecordingSection()
    policy: PolicySection = PolicySection()
    vault: VaultSection = VaultSection()
    log: LogSection = LogSection()
    approvals: ApprovalsSection = ApprovalsSection()
    notify: NotifySection = NotifySection()
    siem: SiemSection = SiemSection()
    oidc: OIDCSection = OIDCSection()
    vendors: VendorsSection = VendorsSection()
    metrics: MetricsSection = MetricsSection()


class Config:
    """Validated settings plus the directory relative paths are resolved against."""

    def __init__(self, settings: Settings, base_dir: Path, source: str) -> None:
        self.settings = settings
        self.base_dir = base_dir
        self.source = source

    def path(self, value: str) -> Path:
        candidate = Path(value).expanduser()
        return candidate if candidate.is_absolute() else self.base_dir / candidate

    @property
    def node(self) -> str:
        return self.settings.broker.node or socket.gethostname()

    @property
    def log_file(self) -> Path:
        return self.path(self.settings.log.file)

    @property
    def data_dir(self) -> Path:
        return self.path(self.settings.broker.data_dir)

    @property
    def recordings_dir(self) -> Path:
        return self.path(self.settings.recording.dir)

    @property
    def policy_dir(self) -> Path:
        return self.path(self.settings.policy.dir)

    @property
    def database_url(self) -> str:
        """The SQLAlchemy async URL, with a relative SQLite path made absolute."""
        url = self.settings.broker.database_url
        scheme, rest = url.split("://", 1)
        if scheme.startswith("sqlite"):
            path = rest[1:] if rest.startswith("/") else rest
            if path and path != ":memory:":
                path = str(self.path(path))
            return f"sqlite+aiosqlite:///{path}"
        if scheme == "postgresql":
            return f"postgresql+asyncpg://{rest}"
        return url


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get("BROKER_CONFIG") or DEFAULT_CONFIG)


def load_config(path: Path, environ: dict[str, str] | None = None) -> Config:
    """Load ``path`` (a broker.toml, or a directory holding one) with BROKER_* overrides."""
    environ = dict(os.environ if environ is None else environ)
    if path.is_dir():
        path = path / DEFAULT_CONFIG
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        from_env = environ.get("BROKER_CONFIG")
        via = f" (from BROKER_CONFIG={from_env})" if from_env and Path(from_env) in (
            path, path.parent) else ""
        raise ConfigError(
            f"{path.absolute()}: no such file{via}; run 'broker init --dir DIR' to make one,"
            " or point --config PATH or BROKER_CONFIG at an existing broker.toml"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return settings_from(raw, environ, path)


def settings_from(raw: dict[str, Any], environ: dict[str, str], path: Path) -> Config:
    merged = {section: dict(values) if isinstance(values, dict) else values
              for section, values in raw.items()}
    overrides = _overrides(environ)
    for (section, key), value in overrides.items():
        target = merged.setdefault(section, {})
        if isinstance(target, dict):
            target[key] = value
    try:
        settings = Settings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path, overrides)) from None
    return Config(settings, path.resolve().parent, str(path))


def _overrides(environ: dict[str, str]) -> dict[tuple[str, str], Any]:
    found: dict[tuple[str, str], Any] = {}
    sections = Settings.model_fields
    for name, value in environ.items():
        if not name.startswith("BROKER_") or name == "BROKER_CONFIG":
            continue
        rest = name[len("BROKER_"):].lower()
        section, _, key = rest.partition("_")
        if section not in sections or not key:
            continue
        found[(section, key)] = _coerce(value)
    return found


def _coerce(value: str) -> Any:
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    return value


def _describe(exc: ValidationError, path: Path, overrides: dict[tuple[str, str], Any]) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else f"[{loc[0]}]" if loc else ""
    source = str(path)
    if len(loc) >= 2 and (loc[0], loc[1]) in overrides:
        source = f"BROKER_{loc[0].upper()}_{loc[1].upper()} (environment)"
    kind = error["type"]
    if kind == "extra_forbidden":
        message = "unknown key" if len(loc) > 1 else "unknown section"
    elif kind == "value_error":
        message = str(error["ctx"]["error"]) if "ctx" in error else error["msg"]
    else:
        message = f"{error['msg'].lower()}, got {error.get('input')!r}"
    more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    return f"{source}: {where}: {message}{more}"


def render_default_config(public_url: str = "https://localhost:8443") -> str:
    return f"""\
# Vendor access broker configuration. Every key can be overridden by an environment
# variable BROKER_<SECTION>_<KEY>, e.g. BROKER_SSH_LISTEN=0.0.0.0:2222.
# Relative paths are relative to this file's directory.

[broker]
public_url = "{public_url}"
database_url = "sqlite:///data/broker.db"
data_dir = "data"
# SIGTERM drains: no new sessions, live ones may go on this long, then are cut
drain_timeout = "5m"
# database unreachable: live sessions in their window are cut after this long
fail_closed_after = "15s"

[ssh]
listen = "0.0.0.0:2222"
proxy_protocol = false
host_key = "data/ssh_host_ed25519_key"
user_ca = "data/user_ca"

[http]
listen = "0.0.0.0:8443"
tls_cert = "data/tls.crt"
tls_key = "data/tls.key"
secret_key = "data/web.key"
# a TLS handshake and a request head must arrive within these (both listeners)
handshake_timeout = "10s"
head_timeout = "10s"

[webproxy]
# Device web UIs are served only here, on an origin of their own (never the portal's).
listen = "0.0.0.0:8444"
# Links to it; empty: [broker] public_url's scheme and host with the port above.
public_url = ""
# With wildcard DNS and certificate, one origin per grant, e.g. "{{grant}}.devices.example.org".
grant_host = ""
# Empty: the [http] certificate and key.
tls_cert = ""
tls_key = ""

[recording]
dir = "recordings"
retain_days = 2555
signing_key = "data/recording_ed25519.pem"
# bytes of a web request/response body kept inside the HAR; larger bodies are separate files
har_body_limit = 1048576

[policy]
dir = "policies"

[vault]
key_file = "data/vault.key"

[log]
# JSON lines (structlog); every audit event is also a line here.
file = "data/broker.log"
level = "info"

[approvals]
# Personal approval links (https://HOST/approve/<token>) stay valid this long.
link_ttl = "4h"

[notify]
# Webhook: JSON POSTs signed with X-Broker-Signature: sha256=<HMAC-SHA256 of the body>, keyed
# with the contents of webhook_secret_file. Empty webhook_url or smtp_host: that channel is off.
webhook_url = ""
webhook_secret_file = "data/webhook.key"
webhook_timeout = "10s"
smtp_host = ""
smtp_port = 25
smtp_starttls = false
smtp_user = ""
smtp_password_env = ""
mail_from = "broker@localhost"
smtp_timeout = "20s"
# Files here (e.g. request.created.txt) replace the shipped e-mail templates of that name.
templates_dir = "notify-templates"
max_attempts = 8
retry_base = "10s"
retry_max = "1h"

[siem]
# Every audit event, as it is written, to the hospital's SIEM over syslog (RFC 5424):
# tcp://HOST:514 (octet-counted frames, RFC 6587) or tls://HOST:6514 (RFC 5425). Empty: off.
syslog_url = ""
# ocsf (one OCSF JSON event per message) or cef (ArcSight Common Event Format)
format = "ocsf"
# tls:// only: the CA that signed the SIEM's certificate (empty: the system's trust store),
# and a client certificate and key if the SIEM asks for one
ca_file = ""
cert_file = ""
key_file = ""
app_name = "vendor-access-broker"
facility = "authpriv"

[vendors]
# A technician with no successful SSH login or web sign-in for this many days is disabled
# (audited technician.inactive_disabled); 'broker tech enable NAME' lets them in again.
inactive_days = 90

[oidc]
# Staff single sign-on with the hospital's OpenID Connect provider (empty issuer: off), e.g.
# https://login.microsoftonline.com/TENANT/v2.0; then client_id, client_secret_env (the name
# of the variable holding the secret) and [oidc.roles] admin = ["biomed-admins"], ...
issuer = ""
client_id = ""
client_secret_env = ""
# false: the password form is gone (keep it true for a local break-glass admin)
local_login = true
"""
