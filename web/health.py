"""Liveness and readiness probes.

/healthz does no I/O, so a slow dependency never gets the process restarted.

/readyz answers 503 only for what makes this process unable to serve: the
database unreachable, a schema behind the code (its alembic revision is an
older one of this code's, or none), or a web role that would see every tenant.
Redis is not among them: starts succeed without it (201), so a Redis outage
answers 200 with ``"redis": "degraded"`` instead of taking every web process
out of rotation at once.

The probe costs one transaction of two statements (bounded by
``PROBE_TIMEOUT_MS``) and one Redis PING (bounded by ``REDIS_PROBE_TIMEOUT_MS``,
well under a load balancer's usual probe timeout). The code's head revision is
read from the migration scripts once per process, at app creation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from flask import Blueprint
from psycopg.errors import InsufficientPrivilege, UndefinedTable
from sqlalchemy import text
from sqlalchemy.exc import ProgrammingError

from models.db import TenantIsolationOff

from .operations import json_response, operation
from .problems import problem_response, problem_type
from .schemas import Liveness, Problem, Readiness
from .services import services

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

PROBE_TIMEOUT_MS = 2000
REDIS_PROBE_TIMEOUT_MS = 250
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


@dataclass(frozen=True)
class SchemaHeads:
    """This code's alembic head revision(s) and every revision it knows."""

    heads: frozenset[str]
    known: frozenset[str]


@cache
def schema_heads(directory: Path = MIGRATIONS) -> SchemaHeads:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(directory))
    return SchemaHeads(
        frozenset(script.get_heads()),
        frozenset(rev.revision for rev in script.walk_revisions()),
    )


def migration_state(db_revisions: set[str], code: SchemaHeads) -> str:
    """ok, ahead (a revision this code does not know) or behind (older, or none)."""
    if db_revisions == code.heads:
        return "ok"
    if db_revisions - code.known:
        return "ahead"
    return "behind"


@bp.get("/healthz")
@operation("Liveness", tag="health", auth=None, responses={200: ("Alive", Liveness)})
def healthz():
    return json_response(Liveness(status="ok"))


def _database_state(code: SchemaHeads) -> tuple[str, str, str | None, str | None]:
    """(database, migrations, the database's revision, why not ready)."""
    try:
        with services().engine.begin() as conn:
            conn.execute(text(f"SET LOCAL statement_timeout = {PROBE_TIMEOUT_MS}"))
            revisions = set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    except TenantIsolationOff as exc:
        return "isolation-off", "unknown", None, str(exc)
    except ProgrammingError as exc:
        # No table: never migrated. No privilege: older than 0004, which grants
        # the API's role the right to read it.
        if isinstance(exc.orig, UndefinedTable | InsufficientPrivilege):
            return "ok", "behind", None, "schema not migrated: run alembic upgrade head"
        raise
    except Exception as exc:
        log.warning("readiness: database check failed: %s", exc)
        return "down", "unknown", None, "database down"
    revision = ",".join(sorted(revisions)) or None
    state = migration_state(revisions, code)
    if state == "behind":
        head = ",".join(sorted(code.heads))
        why = f"schema at {revision}, this code needs {head}: run alembic upgrade head"
        return "ok", state, revision, why
    return "ok", state, revision, None


def _redis_state() -> str:
    try:
        services().probe_redis.ping()
        return "ok"
    except Exception as exc:
        log.warning("readiness: redis unreachable (degraded, still ready): %s", exc)
        return "degraded"


@bp.get("/readyz")
@operation(
    "Readiness: PostgreSQL reachable, schema at this code's revision",
    tag="health",
    auth=None,
    responses={
        200: ("Ready; Redis may be degraded (starts still succeed without it)", Readiness),
        503: (
            "Not ready: the database is down, the schema is behind this code, or the web "
            "role would see every tenant (named in database, migrations and detail)",
            Problem,
        ),
    },
    description=(
        'A Redis outage does not make a process unready: it answers 200 with "redis": "degraded".'
    ),
)
def readyz():
    code = services().schema_heads
    database, migrations, revision, why = _database_state(code)
    state = Readiness(
        database=database, migrations=migrations, revision=revision, redis=_redis_state()
    )
    if why is not None:
        return problem_response(
            503,
            f"not ready: {why}",
            type_=problem_type("not-ready"),
            headers={"Retry-After": "5"},
            **state.model_dump(),
        )
    return json_response(state)
