"""Rendering staff pages: the common frame (who is signed in, their CSRF token, the menu
their role allows) and pagination of long lists."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from broker.http.errors import BadInput
from broker.http.staff.auth import csrf_for, signed_in
from broker.services.staff_accounts import may

T = TypeVar("T")
PAGE_SIZE = 50
MENU = (("dashboard", "/staff/", "Dashboard"), ("requests", "/staff/requests", "Requests"),
        ("grants", "/staff/grants", "Grants"), ("review", "/staff/breakglass", "Break-glass"),
        ("sessions", "/staff/sessions", "Live sessions"),
        ("supervise", "/staff/supervise", "Supervise"),
        ("recordings", "/staff/recordings", "Recordings"), ("audit", "/staff/audit", "Audit log"),
        ("devices", "/staff/devices", "Devices"), ("vendors", "/staff/vendors", "Vendors"))


def render(request: web.Request, template: str, data: Mapping[str, Any],
           status: int = 200) -> web.Response:
    who = signed_in(request)
    role = who.user.role
    menu = [(href, label) for permission, href, label in MENU if may(role, permission)]
    context = {"who": who.user, "csrf": csrf_for(request, who), "menu": menu,
               "can": lambda permission: may(role, permission), "path": request.path, **data}
    return aiohttp_jinja2.render_template(f"staff/{template}", request, context, status=status)


def number(request: web.Request, name: str, default: int | None = None) -> int | None:
    """A positive whole number from the query string or a 400 naming the parameter."""
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise BadInput(name, f"{name}: expected a positive whole number, got {text[:40]!r}")
    return int(text)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    number: int
    pages: int
    total: int
    prev_url: str | None
    next_url: str | None


def page_links(request: web.Request, number: int, total: int,
               size: int = PAGE_SIZE) -> tuple[int, str | None, str | None]:
    pages = max(1, math.ceil(total / size))

    def link(n: int) -> str:
        query = {k: v for k, v in request.query.items() if k != "page"}
        query["page"] = str(n)
        return f"{request.path}?{urlencode(query)}"

    return pages, (link(number - 1) if number > 1 else None), \
        (link(number + 1) if number < pages else None)


def paginate(request: web.Request, items: Sequence[T], size: int = PAGE_SIZE) -> Page[T]:
    number = number_or_one(request)
    pages, prev_url, next_url = page_links(request, number, len(items), size)
    start = (number - 1) * size
    return Page(items[start:start + size], number, pages, len(items), prev_url, next_url)


def number_or_one(request: web.Request) -> int:
    return number(request, "page", 1) or 1
