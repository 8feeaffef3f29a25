"""How the broker reaches one device's web UI: its URL, TLS trust (a CA of its own, or a
pinned certificate), plain HTTP only when allowed on purpose, and how to log in."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from cryptography import x509

from broker.errors import DeviceError, Refused, UsageError
from broker.services.context import Context
from broker.services.lookup import by_name
from broker.store.models import Device, DeviceWeb
from broker.webproxy.paths import DeviceOrigin

AUTH_KINDS = ("none", "basic", "digest", "form")
_PIN = re.compile(r"[0-9a-f]{64}")
_FIELD = re.compile(r"[A-Za-z0-9_.\-\[\]]{1,100}")


@dataclass(frozen=True)
class WebTarget:
    """Everything the proxy needs to reach the device's web UI (no secret here)."""

    device_id: int
    device: str
    origin: DeviceOrigin
    settings: DeviceWeb

    def tls(self) -> ssl.SSLContext | aiohttp.Fingerprint | bool:
        """The ``ssl`` argument for aiohttp's connector."""
        if not self.origin.https:
            return False
        if self.settings.pin_sha256:
            return aiohttp.Fingerprint(bytes.fromhex(self.settings.pin_sha256))
        context = ssl.create_default_context(cadata=self.settings.ca_pem or None)
        if self.settings.ca_pem is None:
            context.load_default_certs()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context


def target_of(device: Device, settings: DeviceWeb | None) -> WebTarget:
    """The device's web target, or :class:`Refused` saying why it cannot be proxied."""
    if not device.web_url:
        raise Refused(f"device {device.name} has no web interface registered"
                      f" (broker device web {device.name} --url URL)")
    try:
        origin = DeviceOrigin.from_url(device.web_url)
    except ValueError as exc:
        raise Refused(f"device {device.name}: {exc}") from None
    settings = settings or DeviceWeb(device_id=device.id or 0)
    if not origin.https and not settings.allow_http:
        raise Refused(f"device {device.name}: its web URL is plain http; an administrator must"
                      f" allow that on purpose (broker device web {device.name} --insecure-http)")
    return WebTarget(device.id or 0, device.name, origin, settings)


async def load_target(ctx: Context, device_id: int) -> WebTarget:
    async with ctx.store.session() as db:
        device = await db.get(Device, device_id)
        settings = await db.get(DeviceWeb, device_id)
    if device is None:
        raise DeviceError(f"device {device_id} no longer exists")
    return target_of(device, settings)


@dataclass
class WebOptions:
    """``broker device web NAME`` options; None leaves a setting as it is."""

    url: str | None = None
    ca_pem: str | None = None
    pin_sha256: str | None = None
    insecure_http: bool | None = None
    auth: str | None = None
    form_path: str | None = None
    form_user_field: str | None = None
    form_password_field: str | None = None


def read_ca(path: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--ca {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise UsageError(f"--ca {path}: not a PEM certificate") from None
    if not certificates:
        raise UsageError(f"--ca {path}: holds no certificate")
    return data.decode("ascii")


def check_options(options: WebOptions) -> None:
    if options.url is not None:
        try:
            DeviceOrigin.from_url(options.url)
        except ValueError as exc:
            raise UsageError(f"--url: {exc}") from None
    if options.pin_sha256 is not None:
        pin = options.pin_sha256.lower().replace(":", "")
        if not _PIN.fullmatch(pin):
            raise UsageError("--pin-sha256: expected the certificate's SHA-256 as 64 hex digits")
        options.pin_sha256 = pin
    if options.pin_sha256 and options.ca_pem:
        raise UsageError("give at most one of --ca FILE and --pin-sha256 HEX")
    if options.auth is not None and options.auth not in AUTH_KINDS:
        raise UsageError(f"--auth: expected one of {', '.join(AUTH_KINDS)}")
    if options.form_path is not None and not options.form_path.startswith("/"):
        raise UsageError("--form-path: expected an absolute path on the device, e.g. /login")
    for name, value in (("--form-user-field", options.form_user_field),
                        ("--form-password-field", options.form_password_field)):
        if value is not None and not _FIELD.fullmatch(value):
            raise UsageError(f"{name}: {value!r} is not a form field name")


async def configure(ctx: Context, actor: str, name: str, options: WebOptions
                    ) -> tuple[Device, DeviceWeb]:
    check_options(options)
    async with ctx.store.session() as db:
        device = await by_name(db, Device, name)
        settings = await db.get(DeviceWeb, device.id) or DeviceWeb(device_id=device.id or 0)
        if options.url is not None:
            device.web_url = options.url
        if options.ca_pem is not None:
            settings.ca_pem, settings.pin_sha256 = options.ca_pem, None
        if options.pin_sha256 is not None:
            settings.pin_sha256, settings.ca_pem = options.pin_sha256, None
        if options.insecure_http is not None:
            settings.allow_http = options.insecure_http
        for field in ("auth", "form_path", "form_user_field", "form_password_field"):
            value = getattr(options, field)
            if value is not None:
                setattr(settings, field, value)
        if settings.auth == "form" and not settings.form_path:
            raise UsageError("--auth form needs --form-path PATH (where the login form posts)")
        settings.updated_at = ctx.now()
        db.add(device)
        db.add(settings)
        await ctx.audit(db, "device.web_configured", actor, device.name, **describe(device,
                                                                                    settings))
    return device, settings


async def show(ctx: Context, name: str) -> tuple[Device, DeviceWeb]:
    async with ctx.store.session() as db:
        device = await by_name(db, Device, name)
        settings = await db.get(DeviceWeb, device.id) or DeviceWeb(device_id=device.id or 0)
    return device, settings


def describe(device: Device, settings: DeviceWeb) -> dict[str, object]:
    trust = ("pinned certificate" if settings.pin_sha256 else "own CA" if settings.ca_pem
             else "system CAs")
    return {"device": device.name, "web_url": device.web_url,
            "tls": trust if (device.web_url or "").startswith("https:") else "none (http)",
            "pin_sha256": settings.pin_sha256, "allow_http": settings.allow_http,
            "auth": settings.auth, "form_path": settings.form_path,
            "form_user_field": settings.form_user_field,
            "form_password_field": settings.form_password_field}
