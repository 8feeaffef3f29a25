"""The staff web UI under ``/staff/``: sign-in (password, then TOTP), pages by role, the
recordings player and the live Watch view. See :mod:`.accounts` for the roles."""

from __future__ import annotations

from aiohttp import web

from broker.http.staff import auth, insight, oidc, pages, watch


def setup(app: web.Application) -> None:
    auth.setup(app)
    oidc.setup(app)
    pages.setup(app)
    watch.setup(app)
    insight.setup(app)
