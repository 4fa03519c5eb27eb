"""Correlation per request, and gunicorn's logs as JSON lines (models/logs.py).

``Correlation`` wraps the whole WSGI app, the Dramatiq dashboard included, so
every route and every answer (problems, 404s, 500s) is covered:

- ``X-Correlation-ID`` is taken from the request when it is 1 to 200
  printable characters (the API's rule for it, web/limits.py), else a new
  UUID is made; ``X-Request-ID`` likewise. Both are echoed on the response.
  A malformed header is never an error here: the routes that store the
  header (timer starts, lead events) still answer it with a 422 problem.
- Both are bound to the log context for the request; the tenant is bound
  once its API key is known (web/auth.py). A start without a correlation_id
  in its body or header takes the request's (web/timers.py,
  web/lead_events.py), so the id echoed is the timer's, and follows it to its
  step rows, outbox events and webhook requests.
- What was bound is left in the environ (``ENVIRON_KEY``) for the access log.

``GunicornLogger`` (the Procfile's ``--logger-class``) writes gunicorn's error
log and access log as JSON lines too when ``SLA_LOG_FORMAT=json``: one object
per request with its method, path, status, bytes, duration and ids.
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from gunicorn.glogging import Logger as _GunicornLogger

from models import logs
from models.config import get_settings

from .limits import HEADERS

CORRELATION_HEADER = "X-Correlation-ID"
REQUEST_HEADER = "X-Request-ID"
ENVIRON_KEY = "sla.log_context"
_ECHOED = {CORRELATION_HEADER.lower(), REQUEST_HEADER.lower()}


def _accepted(value: str | None) -> str | None:
    if value is None or not HEADERS[CORRELATION_HEADER].accepts(value):
        return None
    return value if value.isprintable() else None


def request_correlation() -> str:
    """The request's correlation id: a start's default (a new UUID outside a request)."""
    return logs.correlation_id() or str(uuid4())


class Correlation:
    """WSGI middleware: the request's correlation and request ids (see the module)."""

    def __init__(self, app) -> None:
        self.app = app

    def __call__(self, environ, start_response):
        correlation = _accepted(environ.get("HTTP_X_CORRELATION_ID")) or str(uuid4())
        request_id = _accepted(environ.get("HTTP_X_REQUEST_ID")) or str(uuid4())

        def start(status, headers, exc_info=None):
            kept = [(k, v) for k, v in headers if k.lower() not in _ECHOED]
            kept += [(CORRELATION_HEADER, correlation), (REQUEST_HEADER, request_id)]
            return start_response(status, kept, exc_info)

        token = logs.bind(correlation_id=correlation, request_id=request_id)
        try:
            return self.app(environ, start)
        finally:
            environ[ENVIRON_KEY] = dict(logs.bound())
            logs.unbind(token)


class GunicornLogger(_GunicornLogger):
    """gunicorn's logger, writing this service's lines (see the module)."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        logs.configure("web")  # the app's own loggers, through the root
        for handler in self.error_log.handlers:
            logs.install(handler, "web")
        if get_settings().log_format == "json":
            for handler in self.access_log.handlers:
                logs.install(handler, "web")

    def access(self, resp, req, environ, request_time) -> None:
        if get_settings().log_format != "json":
            return super().access(resp, req, environ, request_time)
        if not self.access_log_enabled:
            return None
        self.access_log.info(
            "%s %s %s",
            environ.get("REQUEST_METHOD"),
            environ.get("PATH_INFO"),
            _status(resp.status),
            extra=access_fields(resp, environ, request_time.total_seconds()),
        )
        return None


def _status(status: Any) -> int | None:
    text = str(status).split(None, 1)[0] if status is not None else ""
    return int(text) if text.isdigit() else None


def access_fields(resp, environ, seconds: float) -> dict[str, Any]:
    """The fields of a request's access line; its ids from the response (the
    echoed headers), its tenant from what the request bound."""
    headers = {k.lower(): v for k, v in resp.headers}
    bound = environ.get(ENVIRON_KEY, {})
    fields = {
        "method": environ.get("REQUEST_METHOD"),
        "path": environ.get("PATH_INFO"),
        "query": environ.get("QUERY_STRING") or None,
        "status": _status(resp.status),
        "bytes": getattr(resp, "sent", None),
        "duration_ms": round(seconds * 1000, 3),
        "remote_addr": environ.get("REMOTE_ADDR"),
        "user_agent": environ.get("HTTP_USER_AGENT"),
        "correlation_id": headers.get(CORRELATION_HEADER.lower()),
        "request_id": headers.get(REQUEST_HEADER.lower()),
        "tenant_id": bound.get("tenant_id"),
    }
    return {k: v for k, v in fields.items() if v is not None}
