"""Structured logs and the correlation context, for every process (web, worker,
scheduler).

- One line per event. ``SLA_LOG_FORMAT=json`` (the default) writes one JSON
  object per line through python-json-logger, so the stdlib ``logging`` calls
  everywhere (ours, Flask's, Dramatiq's, periodiq's, gunicorn's) stay as they
  are; ``console`` writes human-readable lines (``make up``). ``SLA_LOG_LEVEL``
  sets the level.
- A line carries ``time``, ``level``, ``logger``, ``message``, ``role`` (web,
  worker or scheduler) and whatever context is bound where it was written:
  ``correlation_id``, ``request_id``, ``tenant_id``, ``timer_id``, and for a
  Dramatiq message ``message_id`` and ``actor``. ``extra=`` fields of a call
  are written too, and win over the bound ones.
- The context lives in a ``ContextVar``: the web binds it per request
  (web/logs.py), the worker per message (tasks/logs.py), the firing loop per
  batch. Each thread has its own, so threads never see each other's.

``configure(role)`` is called by each entry point (gunicorn's logger class,
the worker's boot middleware, the scheduler's main), never on import: tests
and the Flask CLI keep their own logging.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any, TextIO

from pythonjsonlogger.json import JsonFormatter

from .config import get_settings

# The fields a line may carry from the context, in the order console lines show them.
CONTEXT_FIELDS = (
    "correlation_id",
    "request_id",
    "tenant_id",
    "timer_id",
    "message_id",
    "actor",
    "batch_id",
)

_EMPTY: Mapping[str, str] = MappingProxyType({})
_context: ContextVar[Mapping[str, str]] = ContextVar("sla_log_context", default=_EMPTY)


def bound() -> Mapping[str, str]:
    """The fields bound in this context (read-only)."""
    return _context.get()


def correlation_id() -> str | None:
    return _context.get().get("correlation_id")


def bind(**fields: Any) -> Token:
    """Add ``fields`` (None drops one) to this context's; ``unbind`` the token to
    return to what was bound before."""
    merged = dict(_context.get())
    for name, value in fields.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = str(value)
    return _context.set(MappingProxyType(merged))


def unbind(token: Token) -> None:
    _context.reset(token)


@contextmanager
def binding(**fields: Any) -> Iterator[None]:
    """``bind`` for the ``with`` block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def timer_fields(timer: Mapping[str, Any]) -> dict[str, str]:
    """A timer row's ids, as ``extra=`` of a line about it: bound per timer only
    where its lines are written, never on the firing loop's happy path."""
    fields = {
        "timer_id": timer.get("id"),
        "tenant_id": timer.get("tenant_id"),
        "correlation_id": timer.get("correlation_id"),
    }
    return {k: str(v) for k, v in fields.items() if v is not None}


class ContextFilter(logging.Filter):
    """Copies the bound context onto each record a handler writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if name not in record.__dict__:  # an explicit extra= wins
                setattr(record, name, value)
        return True


def json_formatter(role: str) -> logging.Formatter:
    return JsonFormatter(
        "%(levelname)s %(name)s %(message)s",
        rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
        static_fields={"role": role},
        timestamp="time",
    )


class ConsoleFormatter(logging.Formatter):
    """``time level logger: message  key=value ...``: the context fields, then any extras."""

    _standard = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def __init__(self, role: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {role} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = {k: v for k, v in record.__dict__.items() if k not in self._standard}
        ordered = [k for k in CONTEXT_FIELDS if k in extras] + sorted(
            k for k in extras if k not in CONTEXT_FIELDS
        )
        if not ordered:
            return line
        head, sep, trace = line.partition("\n")
        return head + "  " + " ".join(f"{k}={extras[k]}" for k in ordered) + sep + trace


def formatter(role: str, log_format: str | None = None) -> logging.Formatter:
    """The formatter ``SLA_LOG_FORMAT`` (or ``log_format``) asks for."""
    chosen = log_format or get_settings().log_format
    return json_formatter(role) if chosen == "json" else ConsoleFormatter(role)


def install(handler: logging.Handler, role: str, log_format: str | None = None) -> None:
    """Make ``handler`` write this service's lines (idempotent)."""
    handler.setFormatter(formatter(role, log_format))
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())


def configure(role: str, *, stream: TextIO | None = None) -> None:
    """Set up the root logger for ``role``: its existing handlers (Dramatiq's
    pipe to the supervisor) are reformatted, else one on ``stream`` (stderr) is
    added."""
    settings = get_settings()
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler(stream or sys.stderr))
    for handler in root.handlers:
        install(handler, role, settings.log_format)
        # Also on the handlers: periodiq sets the root's level again after this.
        handler.setLevel(settings.log_level)
    root.setLevel(settings.log_level)
    # Reading the schema's heads at start (web/health.py) is not worth seven lines.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
