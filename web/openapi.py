"""The OpenAPI 3.1 document, generated from the routes' ``operation`` declarations
and the pydantic models they validate with (JSON Schema 2020-12, as 3.1 uses)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from models import keys as api_keys

from . import examples, limits
from .operations import Operation, operation
from .problems import PROBLEM_JSON
from .schemas import DeliveryDetail, Problem, Timer, TimerBatch, Webhook, WebhookCreated

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"

# Lengths come from web/limits.py, which the validation reads too.
HEADERS = {
    "Idempotency-Key": (
        "Makes the start safe to retry: the same key and body return the stored "
        "timer(s) (200); the same key with another body is a 409. "
        + limits.HEADERS["Idempotency-Key"].describe(),
        limits.HEADERS["Idempotency-Key"].schema(),
    ),
    "X-Correlation-ID": (
        "Default correlation_id when the body has none. "
        + limits.HEADERS["X-Correlation-ID"].describe(),
        limits.HEADERS["X-Correlation-ID"].schema(),
    ),
}
PATH_PARAMS = {
    "timer_id": (
        "The timer's id. Anything but a UUID names no timer: 404.",
        {"type": "string", "format": "uuid"},
    ),
    "lead_id": (
        limits.PATH_PARAMS["lead_id"].describe(),
        limits.PATH_PARAMS["lead_id"].schema(),
    ),
    "tenant_id": (
        "The tenant's id. Anything but a UUID names no tenant: 404.",
        {"type": "string", "format": "uuid"},
    ),
    "webhook_id": (
        "The webhook subscription's id. Anything but a UUID names no subscription: 404.",
        {"type": "string", "format": "uuid"},
    ),
    "delivery_id": (
        "The delivery's id, as its subscription's deliveries list it; any other "
        "number names no delivery: 404.",
        {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
    ),
    "calendar_id": (
        "The calendar's id, the tenant's own name for it: 1 to 200 characters, no '/'.",
        {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^/]+$"},
    ),
    "contract_id": (
        "The contract's id, the tenant's own name for it (what timers give as "
        "sla_contract_id): 1 to 200 characters, no '/'.",
        {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^/]+$"},
    ),
    "prefix": (
        "The key's prefix, the 12 hexadecimal characters after sla_ (sla_<prefix>_<secret>);"
        " anything else is a 422.",
        {"type": "string", "pattern": api_keys.KEY_PREFIX_PATTERN},
    ),
}
SECURITY = {"tenant": [{"apiKey": []}], "admin": [{"adminToken": []}], None: []}

# What a response says that other operations take as parameters, as OpenAPI
# runtime expressions. They become links: a started timer leads to its get,
# cancel and complete operations and to its lead's, for clients and for
# stateful testing alike. Only from responses that always hold a timer: a page
# or a lead's list may be empty.
_ONE = {"timer_id": "/id", "lead_id": "/lead_id", "sla_contract_id": "/sla_contract_id"}
_FIRST = {name: "/items/0" + pointer for name, pointer in _ONE.items()}
LINK_SOURCES: dict[type[BaseModel], dict[str, str]] = {
    model: {name: "$response.body#" + pointer for name, pointer in pointers.items()}
    for model, pointers in [(Timer, _ONE), (TimerBatch, _FIRST)]
}
# A subscription leads to its routes; a delivery to its own and its subscription's.
_WEBHOOK = {"webhook_id": "/id"}
_DELIVERY = {"webhook_id": "/webhook_id", "delivery_id": "/id"}
LINK_SOURCES |= {
    model: {name: "$response.body#" + pointer for name, pointer in pointers.items()}
    for model, pointers in [
        (Webhook, _WEBHOOK),
        (WebhookCreated, _WEBHOOK),
        (DeliveryDetail, _DELIVERY),
    ]
}


def _operation_id(path: str, method: str) -> str:
    return method + "_" + re.sub(r"\W+", "_", path).strip("_")


def _links(model: type[BaseModel] | None, ops: list[tuple[str, str, Operation]]) -> dict:
    """Links from a response of ``model`` to every operation whose path parameters
    it supplies (and the query parameters it can, e.g. lead_id for the list)."""
    sources = LINK_SOURCES.get(model)  # type: ignore[arg-type]
    links: dict[str, Any] = {}
    for path, method, op in ops if sources else ():
        in_path = re.findall(r"{(\w+)}", path)
        if not set(in_path) <= sources.keys():
            continue
        in_query = [n for n in (op.query.model_fields if op.query else ()) if n in sources]
        parameters = {f"path.{n}": sources[n] for n in in_path}
        parameters |= {f"query.{n}": sources[n] for n in in_query}
        if parameters:
            op_id = _operation_id(path, method)
            links[op_id] = {"operationId": op_id, "parameters": parameters}
    return links


def _operations(app: Flask) -> list[tuple[str, str, Operation]]:
    found = []
    for rule in app.url_map.iter_rules():
        op = getattr(app.view_functions[rule.endpoint], "operation", None)
        if op is None:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        found.extend((path, m.lower(), op) for m in rule.methods - {"HEAD", "OPTIONS"})
    return sorted(found)


def _media(schema: dict[str, Any], example: Any) -> dict[str, Any]:
    return {"schema": schema} if example is None else {"schema": schema, "example": example}


def _example_path(path: str) -> str:
    """``path`` with its parameters filled in as the examples name them."""
    return path.format_map(_EXAMPLE_PARAMS)


_EXAMPLE_PARAMS = {
    "timer_id": examples.TIMER,
    "lead_id": "lead-42",
    "tenant_id": examples.TENANT,
    "webhook_id": examples.WEBHOOK,
    "delivery_id": "17",
    "calendar_id": "berlin-office",
    "contract_id": "gold",
    "prefix": "3f9c1a7b2e4d",
}


def _problem(description: str, status: int | None = None, path: str = "/") -> dict[str, Any]:
    schema = {"$ref": REF.format(model="Problem")}
    example = None if status is None else examples.problem_example(status, description, path)
    return {"description": description, "content": {PROBLEM_JSON: _media(schema, example)}}


def _responses(path: str, method: str, op: Operation, refs: dict, ops: list) -> dict[str, Any]:
    out: dict[str, Any] = {}
    instance = _example_path(path)
    for status, (description, model) in sorted(op.responses.items()):
        if model is None or model is Problem:
            out[str(status)] = (
                _problem(description, status, instance) if model else {"description": description}
            )
        else:
            schema = refs[(model, "serialization")]
            out[str(status)] = {
                "description": description,
                "content": {
                    "application/json": _media(
                        schema, examples.response_example(model, method, path)
                    )
                },
            }
            if links := _links(model, ops):
                out[str(status)]["links"] = links

    def plumbing(status: int, description: str) -> None:
        out.setdefault(str(status), _problem(description, status, instance))

    # The errors the plumbing itself can produce.
    if op.auth:
        plumbing(401, "Missing or invalid bearer token")
    if op.auth == "tenant":
        plumbing(403, "The API key's tenant is disabled")
    if op.body:
        plumbing(400, "Malformed JSON or invalid UTF-8")
        plumbing(413, "Body larger than the configured limit")
        plumbing(415, "Body not sent as application/json")
    if op.body or op.query or op.headers:
        plumbing(422, "Validation failed; see errors")
    if op.limited:
        plumbing(429, "The tenant's write limit is used up; see Retry-After")
    if op.auth:
        plumbing(503, "Database unavailable; see Retry-After")
    out["default"] = _problem("Unexpected error", 500, instance)
    return out


def _parameters(path: str, op: Operation) -> list[dict[str, Any]]:
    params = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": PATH_PARAMS[name][1],
            "description": PATH_PARAMS[name][0],
        }
        for name in re.findall(r"{(\w+)}", path)
    ]
    params += [
        {
            "name": name,
            "in": "header",
            "required": False,
            "schema": HEADERS[name][1],
            "description": HEADERS[name][0],
        }
        for name in op.headers
    ]
    if op.query is not None:
        schema = op.query.model_json_schema()
        required = set(schema.get("required", ()))
        params += [
            {"name": name, "in": "query", "required": name in required, "schema": _absent(prop)}
            for name, prop in schema["properties"].items()
        ]
    return params


def _absent(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent, never null: drop pydantic's ``anyOf [.., null]``."""
    options = [s for s in schema.get("anyOf", ()) if s != {"type": "null"}]
    if len(options) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and (k, v) != ("default", None)}
    return {**rest, **options[0]}


def build_document(app: Flask) -> dict[str, Any]:
    ops = _operations(app)
    models: set[tuple[type[BaseModel], str]] = {(Problem, "serialization")}
    for _, _, op in ops:
        if op.body is not None:
            models.add((op.body, "validation"))
        models.update((m, "serialization") for _, m in op.responses.values() if m is not None)
    refs, defs = models_json_schema(sorted(models, key=lambda m: m[0].__name__), ref_template=REF)

    paths: dict[str, dict[str, Any]] = {}
    for path, method, op in ops:
        entry: dict[str, Any] = {
            "operationId": _operation_id(path, method),
            "summary": op.summary,
            "tags": [op.tag],
            "security": SECURITY[op.auth],
            "parameters": _parameters(path, op),
            "responses": _responses(path, method, op, refs, ops),
        }
        if op.description:
            entry["description"] = op.description
        if op.body is not None:
            schema = refs[(op.body, "validation")]
            entry["requestBody"] = {
                "required": op.body_required,
                "content": {"application/json": _media(schema, examples.request_example(op.body))},
            }
        paths.setdefault(path, {})[method] = entry

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "SLA timers",
            "version": "1.0.0",
            "description": "Durable, multi-tenant SLA timers. Errors are RFC 9457 problems.",
        },
        "paths": paths,
        "components": {
            "schemas": defs.get("$defs", {}),
            "securitySchemes": {
                "apiKey": {"type": "http", "scheme": "bearer", "description": "Tenant API key"},
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "SLA_ADMIN_TOKEN",
                },
            },
        },
    }


@bp.get("/openapi.json")
@operation("This document", tag="meta", auth=None, responses={200: ("OpenAPI 3.1 document", None)})
def openapi_json():
    doc = current_app.extensions.get("openapi")
    if doc is None:  # built once: the routes cannot change after start-up
        doc = current_app.extensions["openapi"] = build_document(current_app)
    return jsonify(doc)
