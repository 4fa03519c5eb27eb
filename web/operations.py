"""The ``operation`` decorator: one declaration per route drives both its
behaviour (authentication, query and body validation) and its OpenAPI entry,
so the document cannot drift from what the route accepts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Response, g
from pydantic import BaseModel

from .auth import authenticate_admin, authenticate_tenant
from .parsing import parse_body, parse_query
from .services import services

Auth = Literal["tenant", "admin"] | None


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    auth: Auth
    body: type[BaseModel] | None
    body_required: bool
    query: type[BaseModel] | None
    headers: tuple[str, ...]
    # status -> (description, response model; a Problem model means problem+json)
    responses: dict[int, tuple[str, type[BaseModel] | None]] = field(default_factory=dict)
    description: str | None = None
    # Counts against the tenant's write limit (SLA_RATE_LIMIT).
    limited: bool = False


def operation(
    summary: str,
    *,
    tag: str,
    responses: dict[int, tuple[str, type[BaseModel] | None]],
    auth: Auth = "tenant",
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    query: type[BaseModel] | None = None,
    headers: tuple[str, ...] = (),
    description: str | None = None,
    limited: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    op = Operation(
        summary, tag, auth, body, body_required, query, headers, responses, description, limited
    )

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            # Authenticate first: an anonymous caller learns nothing from validation errors.
            if auth == "tenant":
                tenant_id = authenticate_tenant()
                rate_limit = services().rate_limit
                if limited and rate_limit is not None:
                    rate_limit.check(tenant_id)
            elif auth == "admin":
                authenticate_admin()
            if query is not None:
                kwargs["query"] = parse_query(query)
            if body is not None:
                kwargs["body"], g.raw_body = parse_body(body, required=body_required)
            return view(**kwargs)

        wrapper.operation = op  # type: ignore[attr-defined]
        return wrapper

    return decorate


def json_response(
    model: BaseModel, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        model.model_dump_json(), status=status, mimetype="application/json", headers=headers
    )
