"""Where the broker tells others: ``[approvals]``, ``[notify]``, ``[siem]``, ``[metrics]``."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from broker.config._base import _ENV_NAME, _check_listen, _duration_text, _Section, _url_parts


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
        parts, port = _url_parts(value)
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
