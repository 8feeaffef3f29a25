"""The OpenAPI 3.1 document, generated from the operation table and the pydantic models."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from broker.http.api.framework import JSON, PREFIX, NoParams, Operation
from broker.http.api.routes import OPERATIONS
from broker.http.api.schemas import Error

REF = "#/components/schemas/{model}"

REASONS = {
    200: "OK", 201: "Created", 400: "Malformed request (not JSON, or a body where none is "
    "taken)", 401: "Missing, unknown, expired or revoked bearer token", 403: "The token's role "
    "may not do this, or a rule refused it", 404: "No such object", 409: "The object's state "
    "forbids this", 413: "The body is larger than [http] max_body", 415: "The body is not "
    "application/json", 422: "A field is missing, unknown or invalid (named in 'field')",
    429: "Too many failed authentication attempts from this address",
}
DESCRIPTION = """\
Automation access to the vendor access broker.

Every operation needs `Authorization: Bearer <token>`; tokens are made with
`broker api-token create NAME --role admin|approver|auditor [--approver NAME]` and shown once.
Admin tokens may do everything; approver tokens read requests, grants and devices and decide
as their approver; auditor tokens read everything and change nothing.

Errors are `{"error": "<field>: <what is wrong>", "status": <code>, "field": "<field>"}`.
Lists take `limit` (1-500) and `after` (the `next` value of the previous page).
"""


Key = tuple[type[BaseModel], JsonSchemaMode]
Names = dict[Key, dict[str, Any]]


def _models() -> list[Key]:
    seen: dict[Key, None] = {(Error, "serialization"): None}
    for op in OPERATIONS:
        seen[(op.response, "serialization")] = None
        for model in (op.path_params, op.query, op.body):
            if model is not None and model is not NoParams:
                seen[(model, "validation")] = None
    return list(seen)


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter that may be left out needs no ``null`` alternative: drop it."""
    options = schema.get("anyOf")
    if not options:
        return schema
    kept = [o for o in options if o.get("type") != "null"]
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**rest, **kept[0]} if len(kept) == 1 else {**rest, "anyOf": kept}


def _parameters(model: type[BaseModel], where: str, schema: dict[str, Any]
                ) -> list[dict[str, Any]]:
    if model is NoParams:
        return []
    properties = schema.get("properties", {})
    required = set(schema.get("required", []))
    result = []
    for name, prop in properties.items():
        prop = _without_null({k: v for k, v in prop.items()
                              if k != "title" and not (k == "default" and v is None)})
        description = prop.pop("description", None)
        parameter: dict[str, Any] = {"name": name, "in": where,
                                     "required": where == "path" or name in required,
                                     "schema": prop}
        if description:
            parameter["description"] = description
        result.append(parameter)
    return result


def _responses(op: Operation, names: Names
               ) -> dict[str, Any]:
    responses: dict[str, Any] = {str(op.status): {
        "description": REASONS[op.status],
        "content": {JSON: {"schema": names[(op.response, "serialization")]}}}}
    error = {JSON: {"schema": names[(Error, "serialization")]}}
    for status in op.statuses:
        entry: dict[str, Any] = {"description": REASONS[status], "content": error}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        if status == 429:
            entry["headers"] = {"Retry-After": {"schema": {"type": "string"}}}
        responses[str(status)] = entry
    return responses


def _operation(op: Operation, names: Names,
               defs: dict[str, Any]) -> dict[str, Any]:
    def resolved(model: type[BaseModel]) -> dict[str, Any]:
        ref = names[(model, "validation")]["$ref"]
        return dict(defs[ref.rsplit("/", 1)[1]])

    parameters = []
    for model, where in ((op.path_params, "path"), (op.query, "query")):
        if model is not NoParams:
            parameters += _parameters(model, where, resolved(model))
    doc: dict[str, Any] = {
        "operationId": op.operation_id, "summary": op.summary, "tags": [op.tag],
        "description": f"Token roles allowed: {', '.join(sorted(op.roles))}.",
        "responses": _responses(op, names),
    }
    if parameters:
        doc["parameters"] = parameters
    if op.body is not None:
        doc["requestBody"] = {"required": op.body_required,
                              "content": {JSON: {"schema": names[(op.body, "validation")]}}}
    return doc


def _paths(operations: Iterable[Operation],
           names: Names,
           defs: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, names, defs)
    return paths


@cache
def document() -> dict[str, Any]:
    names, top = models_json_schema(_models(), ref_template=REF)
    defs = top.get("$defs", {})
    flat: Names = {(model, mode): ref for (model, mode), ref in names.items()
                   if issubclass(model, BaseModel)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Vendor access broker API", "version": "1.0.0",
                 "description": DESCRIPTION},
        "servers": [{"url": PREFIX}],
        "security": [{"bearer": []}],
        "tags": [{"name": t} for t in dict.fromkeys(op.tag for op in OPERATIONS)],
        "paths": _paths(OPERATIONS, flat, defs),
        "components": {
            "schemas": defs,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "an API token (vab_...)"}},
        },
    }
