"""Settings: ``broker.toml`` plus ``BROKER_<SECTION>_<KEY>`` environment overrides.

Relative paths in the file are relative to the file's directory. Every problem is reported as
one line naming the file, the key and what is wrong.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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

    _listen = field_validator("listen")(classmethod(lambda cls, v: _check_listen(v)))

    @model_validator(mode="after")
    def _tls_pair(self) -> HTTPSection:
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


def _duration_text(value: str, *, at_most: str | None = None) -> str:
    from broker.domain.durations import DurationError, parse_duration

    try:
        parsed = parse_duration(value)
    except DurationError as exc:
        raise ValueError(str(exc)) from None
    if at_most is not None and parsed > parse_duration(at_most):
        raise ValueError(f"{value!r} is longer than the most allowed, {at_most}")
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


class Settings(_Section):
    broker: BrokerSection = BrokerSection()
    ssh: SSHSection = SSHSection()
    http: HTTPSection = HTTPSection()
    recording: RecordingSection = RecordingSection()
    policy: PolicySection = PolicySection()
    vault: VaultSection = VaultSection()
    log: LogSection = LogSection()
    approvals: ApprovalsSection = ApprovalsSection()
    notify: NotifySection = NotifySection()


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
    environ = dict(os.environ if environ is None else environ)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file (run 'broker init' or pass --config PATH)"
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
"""
