"""Liveness and readiness probes.

/healthz does no I/O, so a slow dependency never gets the process restarted;
/readyz checks PostgreSQL and Redis with short timeouts, so a load balancer
stops routing here while either is down.
"""

from __future__ import annotations

import logging

from flask import Blueprint, current_app
from sqlalchemy import text

from .operations import json_response, operation
from .problems import problem_response, problem_type
from .schemas import Liveness, Problem, Readiness

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

PROBE_TIMEOUT_MS = 2000


@bp.get("/healthz")
@operation("Liveness", tag="health", auth=None, responses={200: ("Alive", Liveness)})
def healthz():
    return json_response(Liveness(status="ok"))


def _database_ok() -> bool:
    try:
        with current_app.extensions["sla"].engine.begin() as conn:
            conn.execute(text(f"SET LOCAL statement_timeout = {PROBE_TIMEOUT_MS}"))
            conn.execute(text("SELECT 1"))
        return True
    except Exception as exc:
        log.warning("readiness: database check failed: %s", exc)
        return False


def _redis_ok() -> bool:
    try:
        return bool(current_app.extensions["sla"].redis.ping())
    except Exception as exc:
        log.warning("readiness: redis check failed: %s", exc)
        return False


@bp.get("/readyz")
@operation(
    "Readiness: PostgreSQL and Redis reachable",
    tag="health",
    auth=None,
    responses={
        200: ("Ready", Readiness),
        503: ("A dependency is down (named in the database and redis members)", Problem),
    },
)
def readyz():
    state = Readiness(
        database="ok" if _database_ok() else "down",
        redis="ok" if _redis_ok() else "down",
    )
    down = [name for name, value in state.model_dump().items() if value == "down"]
    if down:
        return problem_response(
            503,
            f"not ready: {' and '.join(down)} down",
            type_=problem_type("not-ready"),
            headers={"Retry-After": "5"},
            **state.model_dump(),
        )
    return json_response(state)
