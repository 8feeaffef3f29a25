"""How an API operation is declared once and then served and documented from that declaration.

An :class:`Operation` names its path, roles, parameter and body models and response model;
:func:`serve` turns it into an aiohttp handler that authenticates, validates (422 naming the
field), calls the handler and serialises the response through the response model.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from broker.http.api.auth import caller_of
from broker.http.errors import BadInput
from broker.http.keys import CONTEXT
from broker.services.api_tokens import Caller, Role
from broker.services.context import Context

PREFIX = "/api/v1"
JSON = "application/json"

P = TypeVar("P", bound=BaseModel)
Q = TypeVar("Q", bound=BaseModel)
B = TypeVar("B", bound=BaseModel)


@dataclass(frozen=True)
class Call(Generic[P, Q, B]):
    """What a handler gets: the context, the caller, and its validated inputs."""

    ctx: Context
    caller: Caller
    path: P
    query: Q
    body: B | None


Handler = Callable[[Call[Any, Any, Any]], Awaitable[BaseModel | dict[str, Any]]]


class NoParams(BaseModel):
    model_config = {"extra": "forbid"}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    roles: frozenset[Role]
    handler: Handler
    response: type[BaseModel]
    status: int = 200
    path_params: type[BaseModel] = NoParams
    query: type[BaseModel] = NoParams
    body: type[BaseModel] | None = None
    body_required: bool = False
    # Failures this operation can answer besides 401/403/429 (which every operation can).
    errors: tuple[int, ...] = field(default=())

    @property
    def statuses(self) -> tuple[int, ...]:
        base = {401, 403, 429, 422} | set(self.errors)
        if self.method == "POST":
            base |= {400, 413} | ({415} if self.body is not None else set())
        return tuple(sorted(base))


def validation_error(exc: ValidationError, where: str) -> BadInput:
    """422 for the first problem, naming its dotted field path (``where`` if it has none)."""
    first = exc.errors(include_url=False, include_input=False)[0]
    name = ".".join(str(part) for part in first["loc"]) or where
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "is not a known field"
    elif first["type"] == "missing":
        message = "is required"
    return BadInput(name, f"{name}: {message}", status=422)


def _validate(model: type[P], data: Mapping[str, Any], where: str) -> P:
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise validation_error(exc, where) from None


def _query(request: web.Request, model: type[Q]) -> Q:
    data: dict[str, str] = {}
    for key in request.query:
        values = request.query.getall(key)
        if len(values) > 1:
            raise BadInput(key, f"{key}: is given more than once", status=422)
        data[key] = values[0]
    return _validate(model, data, "query")


async def _body(request: web.Request, model: type[B], required: bool) -> B | None:
    raw = await request.read()  # over [http] max_body: 413 from aiohttp
    if not raw and not required:
        return None
    if request.content_type != JSON:
        raise BadInput("Content-Type", f"Content-Type: send {JSON}, not "
                       f"{request.content_type or 'nothing'}", status=415)
    if not raw:
        raise BadInput("body", "body: a JSON object is required", status=400)
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        if first["type"] == "json_invalid":
            detail = first.get("ctx", {}).get("error", first["msg"])
            raise BadInput("body", f"body: not valid JSON ({detail})", status=400) from None
        if first["type"] == "model_type":
            raise BadInput("body", "body: must be a JSON object", status=422) from None
        raise validation_error(exc, "body") from None


def serve(operation: Operation) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        caller = await caller_of(request, operation.roles)
        path = _validate(operation.path_params, request.match_info, "path")
        query = _query(request, operation.query)
        body = None
        if operation.body is not None:
            body = await _body(request, operation.body, operation.body_required)
        elif request.method == "POST" and await request.read():
            raise BadInput("body", "body: this operation takes no request body", status=400)
        call = Call(request.app[CONTEXT], caller, path, query, body)
        result = await operation.handler(call)
        payload = operation.response.model_validate(result, from_attributes=True)
        return web.json_response(
            payload.model_dump(mode="json"), status=operation.status,
            dumps=lambda data: json.dumps(data, ensure_ascii=False))

    handle.__name__ = operation.operation_id
    return handle


def page(items: list[Any], limit: int, key: Callable[[Any], Any]) -> tuple[list[Any], Any]:
    """The first ``limit`` items and the cursor for the next page (None at the end)."""
    chunk = items[:limit]
    return chunk, (key(chunk[-1]) if len(items) > limit and chunk else None)
