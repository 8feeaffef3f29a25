"""The device web proxy: devices' web interfaces, sign-in links, web sessions."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from broker.store.models._fields import _utc


# -- device web proxy (issue 8): TLS trust and login per device, sign-in links, web sessions --
class DeviceWeb(SQLModel, table=True):
    """How the broker reaches a device's web UI (``broker device web NAME ...``)."""

    __tablename__ = "device_web"
    device_id: int = Field(foreign_key="device.id", primary_key=True)
    ca_pem: str | None = None  # trust only this CA (PEM) for the device's HTTPS
    pin_sha256: str | None = Field(default=None, max_length=64)  # or exactly this certificate
    allow_http: bool = False  # an http:// web_url is refused unless this was set on purpose
    auth: str = Field(default="none", max_length=10)  # none | basic | digest | form
    form_path: str | None = Field(default=None, max_length=500)
    form_user_field: str = Field(default="username", max_length=100)
    form_password_field: str = Field(default="password", max_length=100)
    updated_at: datetime = _utc()  # type: ignore[assignment]


class WebSignin(SQLModel, table=True):
    """A one-time sign-in link (``ssh TECH@broker weblogin DEVICE``); only its hash is kept."""

    __tablename__ = "web_signin"
    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    technician_id: int = Field(foreign_key="technician.id")
    grant_id: int = Field(foreign_key="grant.id", index=True)
    device_id: int = Field(foreign_key="device.id")
    created_at: datetime = _utc()  # type: ignore[assignment]
    expires_at: datetime = _utc()  # type: ignore[assignment]
    used_at: datetime | None = _utc(default=None)  # type: ignore[assignment]


class WebSession(SQLModel, table=True):
    """A browser signed in to one grant's device web UI; its cookie's hash is kept."""

    __tablename__ = "web_session"
    id: str = Field(primary_key=True, max_length=40)
    cookie_hash: str = Field(max_length=64, unique=True)
    grant_id: int = Field(foreign_key="grant.id", index=True)
    technician_id: int = Field(foreign_key="technician.id")
    device_id: int = Field(foreign_key="device.id")
    client_addr: str | None = Field(default=None, max_length=200)
    created_at: datetime = _utc()  # type: ignore[assignment]
    ended_at: datetime | None = _utc(default=None)  # type: ignore[assignment]
    end_reason: str | None = Field(default=None, max_length=300)
