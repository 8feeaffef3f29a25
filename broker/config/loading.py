"""Settings: ``broker.toml`` plus ``BROKER_<SECTION>_<KEY>`` environment overrides.

Relative paths in the file are relative to the file's directory. Every problem is reported as
one line naming the file, the key and what is wrong.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any

from pydantic import (
    ValidationError,
)

from broker.config._base import _Section
from broker.config.identity import LDAPSection, OIDCSection, VendorsSection
from broker.config.outputs import ApprovalsSection, MetricsSection, NotifySection, SiemSection
from broker.config.scan import ScanSection
from broker.config.sections import (
    DEFAULT_CONFIG,
    BrokerSection,
    HTTPSection,
    LogSection,
    PolicySection,
    RecordingSection,
    SSHSection,
    VaultSection,
    WebProxySection,
)
from broker.errors import ConfigError


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
    ldap: LDAPSection = LDAPSection()
    scan: ScanSection = ScanSection()


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
# broker processes sharing the listeners (default: one per CPU core; 1: a single process)
# workers = 4
# the event loop: "uvloop" (the default, faster) or "asyncio" (the standard library's)
event_loop = "uvloop"

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

[scan]
# Malware scanning of uploads over ICAP (e.g. "icap://127.0.0.1:1344/srvclamav"; empty: off).
# Uploads are held at the broker and reach the device only when the scanner finds them clean.
icap_url = ""
# the scanner unreachable or failing (or a file over max_size): refuse | allow the file
on_error = "refuse"
timeout = "60s"
max_size = "100M"
"""
