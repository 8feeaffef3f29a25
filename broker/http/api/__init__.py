"""The REST API under ``/api/v1``: token-authenticated, validated, documented in OpenAPI 3.1
at ``/api/v1/openapi.json``."""

from __future__ import annotations

from aiohttp import web

from broker.http.api.auth import FAILED_AUTH, FailedAuth
from broker.http.api.framework import PREFIX, serve
from broker.http.api.openapi import document
from broker.http.api.routes import OPERATIONS


async def openapi_json(_request: web.Request) -> web.Response:
    return web.json_response(document())


def setup(app: web.Application) -> None:
    app[FAILED_AUTH] = FailedAuth()
    app.router.add_get(f"{PREFIX}/openapi.json", openapi_json)
    for operation in OPERATIONS:
        app.router.add_route(operation.method, PREFIX + operation.path, serve(operation))
