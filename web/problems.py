"""RFC 9457 problem details: the one shape of every error response.

Views raise ``ApiProblem``; the handlers registered here turn it, Flask's own
HTTP errors, the service's errors (by type: models/errors.py), database outages
(``is_outage``) and anything unexpected into ``application/problem+json``, so a
client never has to parse an HTML page.
"""

from __future__ import annotations

import json
import logging
import uuid
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from models.errors import TimerConflict, is_outage

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
_TYPE = "urn:sla-timers:problem:{}"
RETRY_AFTER_SECONDS = 5
MAX_FIELD_CHARS = 300


def problem_type(slug: str) -> str:
    return _TYPE.format(slug)


class ApiProblem(Exception):
    """An error answer; ``extra`` becomes extension members (e.g. ``errors``)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type_: str = "about:blank",
        title: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.type = type_
        self.title = title
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> Response:
        return problem_response(
            self.status,
            self.detail,
            type_=self.type,
            title=self.title,
            headers=self.headers,
            **self.extra,
        )


def problem_response(
    status: int,
    detail: str,
    *,
    type_: str = "about:blank",
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.path,
        **extra,
    }
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    response.headers.update(headers or {})
    return response


def validation_error(errors: list[dict[str, str]], detail: str | None = None) -> ApiProblem:
    """422 with ``errors: [{"field": "a.0.b", "reason": "..."}]``."""
    # Field paths can hold client-chosen keys: keep the answer small.
    errors = [{**e, "field": e["field"][:MAX_FIELD_CHARS]} for e in errors]
    return ApiProblem(
        422,
        detail or "the request is not valid; see errors",
        type_=problem_type("validation-error"),
        title="Request validation failed",
        errors=errors,
    )


def not_found(what: str = "resource") -> ApiProblem:
    return ApiProblem(404, f"{what} not found")


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    detail = exc.description or HTTPStatus(status).description
    if isinstance(exc, RequestEntityTooLarge):
        limit = request.max_content_length
        detail = f"the request body exceeds the limit of {limit} bytes"
    # Keep headers such as Allow (405) and drop the HTML content type.
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    return problem_response(status, detail, headers=headers)


def conflict(exc: TimerConflict) -> ApiProblem:
    """409: the request contradicts the stored state (a KeyReused or DuplicateStart too)."""
    return ApiProblem(409, str(exc), type_=problem_type("conflict"))


def _db_unavailable(exc: Exception) -> Response:
    log.warning("database unavailable: %s", exc)
    return problem_response(
        503,
        "the database is unavailable; retry later",
        type_=problem_type("service-unavailable"),
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _unexpected(exc: Exception) -> Response:
    if is_outage(exc):  # an outage rather than a bug: the client may retry later
        return _db_unavailable(exc)
    error_id = uuid.uuid4().hex
    log.exception(
        "unhandled error %s on %s %s (key %s)",
        error_id,
        request.method,
        request.path,
        g.get("api_key_prefix") or "-",
    )
    return problem_response(
        500, f"an unexpected error occurred (error id {error_id})", error_id=error_id
    )


def register(app: Flask) -> None:
    app.register_error_handler(ApiProblem, lambda exc: exc.response())
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(TimerConflict, lambda exc: conflict(exc).response())
    app.register_error_handler(Exception, _unexpected)
