"""The service's errors, in one place, and the one test for an outage.

``SlaError`` is the base of the errors the service raises on purpose; the web
layer maps them to problems by type (web/problems.py, web/timers.py). Errors of
the database driver are not wrapped: ``is_outage`` tells which of them mean
"the database is unavailable" (retry later) rather than a bug.
"""

from __future__ import annotations

import psycopg
import sqlalchemy.exc


class SlaError(Exception):
    """Base of the service's own errors."""


class ConfigError(SlaError, ValueError):
    """An environment variable holds a value the service cannot use."""


class TimerConflict(SlaError):
    """The request contradicts the stored state (409)."""


class DuplicateStart(TimerConflict):
    """A timer with the same lead, contract and started_at already exists."""


KEY_REUSED = "Idempotency-Key was already used with a different request body"


class KeyReused(TimerConflict):
    """An idempotency key was already used with a different request body."""

    def __init__(self, detail: str = KEY_REUSED) -> None:
        super().__init__(detail)


class StepCannotRun(SlaError):
    """The step is recorded FAILED with this message; later steps still run."""


# Outages rather than bugs: the database is unreachable, the connection was
# lost, the pool is exhausted or a statement timed out.
OUTAGE_TYPES = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.TimeoutError,  # pool exhausted
    psycopg.OperationalError,
)


def connection_lost(exc: BaseException) -> bool:
    """The statement's connection is gone (SQLAlchemy invalidated it)."""
    return isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated


def is_outage(exc: BaseException) -> bool:
    """An outage (unreachable, connection lost, pool or statement timeout), not a bug:
    the caller may try the same work again later."""
    return connection_lost(exc) or isinstance(exc, OUTAGE_TYPES)
