"""One place maps every failure to a response: JSON under ``/api/``, a page elsewhere.

Bad input is the visitor's mistake and gets 4xx with one line naming what is wrong; the
broker's own errors map by kind; anything else is logged and answered with a plain 500 that
reveals nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import aiohttp_jinja2
import structlog
from aiohttp import web

from broker.errors import BrokerError, Conflict, NotFound, Refused, UsageError
from broker.http.security import Handler

log = structlog.get_logger("broker.http")

STATUS_OF: list[tuple[type[BrokerError], int]] = [
    (NotFound, 404), (Conflict, 409), (Refused, 403), (UsageError, 400),
]


class BadInput(web.HTTPBadRequest):
    """400/422 naming the field at fault: ``raise BadInput("reason", "is required")``."""

    def __init__(self, field: str | None, message: str, status: int = 400) -> None:
        super().__init__(text=message)
        self.status_code = status
        self.field = field
        self.message = message


def wants_json(request: web.Request) -> bool:
    return request.path.startswith("/api/")


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadInput as exc:
        return _error(request, exc.status_code, exc.message, exc.field)
    except web.HTTPException as exc:
        if exc.status_code < 400:
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status_code}:") \
            else exc.reason
        return _error(request, exc.status_code, message or exc.reason, headers=exc.headers)
    except BrokerError as exc:
        status = next((code for kind, code in STATUS_OF if isinstance(exc, kind)), 400)
        return _error(request, status, str(exc), getattr(exc, "field", None))
    except Exception:
        log.exception("request failed", method=request.method, path=request.path)
        return _error(request, 500, "the broker could not complete this request")


def _error(request: web.Request, status: int, message: str, field: str | None = None,
           headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    extra = {k: v for k, v in (headers or {}).items()
             if k.lower() in ("allow", "retry-after", "www-authenticate", "location")}
    if wants_json(request):
        body: dict[str, object] = {"error": message, "status": status}
        if field:
            body["field"] = field
        return web.json_response(body, status=status, headers=extra,
                                 dumps=lambda data: json.dumps(data, ensure_ascii=False))
    response = aiohttp_jinja2.render_template(
        "error.html", request, {"status": status, "message": message}, status=status)
    response.headers.update(extra)
    return response
