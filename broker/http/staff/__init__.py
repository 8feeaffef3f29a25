"""The staff web UI under ``/staff/``: sign-in (password, then TOTP), pages by role, the
recordings player and the live Watch view. The roles: :mod:`broker.services.staff_accounts`."""

from __future__ import annotations

from aiohttp import web

from broker.http.staff import (
    auth,
    firmware,
    insight,
    oidc,
    pages,
    supervise,
    vendor_pages,
    watch,
)


def setup(app: web.Application) -> None:
    auth.setup(app)
    oidc.setup(app)
    pages.setup(app)
    watch.setup(app)
    supervise.setup(app)
    insight.setup(app)
    firmware.setup(app)
    vendor_pages.setup(app)
