"""Insert attempts on step rows and outbox events, seen by the database itself.

Step rows are unique per (tenant, timer, step) and events per (tenant,
idempotency key), so counting rows cannot show that the code tried to write
one twice: ``ON CONFLICT DO NOTHING`` hides the second try. A BEFORE INSERT
trigger, installed in a test database only, logs every attempt into the side
table ``test_insert_attempts`` with ``clock_timestamp()``: it fires before
the conflict check, so a dropped duplicate is logged too, and the time is the
database's, not the worker's ``at``. A transaction that rolls back (a killed
worker, a failed batch) takes its log rows with it: the log holds the
attempts that committed.

Usage (with a psycopg or SQLAlchemy connection acting as the tables' owner)::

    install(conn)           # once per database; idempotent
    reset(conn)             # empty the log (TRUNCATE of the tables does not)
    duplicate_attempts(conn)  # [] when nothing was attempted twice
    early_steps(conn)       # [] when no step was written before due + after_seconds

The trigger function is SECURITY DEFINER (owned by whoever installs it, the
tables' owner), so inserts made as ``sla_app`` or ``sla_maintenance`` log
whatever their grants; both roles may also read the log. The side table has no
row-level security: it spans tenants.
"""

from __future__ import annotations

from typing import Any

TABLE = "test_insert_attempts"

# No percent sign in here: run through SQLAlchemy, the driver reads it as a placeholder.
INSTALL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    table_name text NOT NULL,
    tenant_id uuid NOT NULL,
    timer_id uuid,
    -- Step rows: their step and outcome. Events: their key and type.
    escalation_step int,
    outcome text,
    idempotency_key text,
    event_type text,
    -- The database's clock when the row reached it, not the statement's start.
    seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    backend_pid int NOT NULL DEFAULT pg_backend_pid()
);

-- The trigger writes as its owner; the service's roles may read the log (tests
-- read it through the maintenance engine) and write it directly. In single-login
-- mode they may not exist: the owner reads it then.
DO $$
DECLARE r text;
BEGIN
    FOR r IN SELECT rolname FROM pg_roles WHERE rolname IN ('sla_app', 'sla_maintenance') LOOP
        EXECUTE 'GRANT SELECT, INSERT ON {TABLE} TO ' || quote_ident(r);
        EXECUTE 'GRANT USAGE ON SEQUENCE {TABLE}_id_seq TO ' || quote_ident(r);
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION test_log_insert_attempt() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
    IF TG_TABLE_NAME = 'sla_escalation_events' THEN
        INSERT INTO {TABLE} (table_name, tenant_id, timer_id, escalation_step, outcome,
                             idempotency_key)
        VALUES (TG_TABLE_NAME, NEW.tenant_id, NEW.timer_id, NEW.escalation_step, NEW.outcome,
                NEW.idempotency_key);
    ELSE
        INSERT INTO {TABLE} (table_name, tenant_id, timer_id, idempotency_key, event_type)
        VALUES (TG_TABLE_NAME, NEW.tenant_id, NEW.timer_id, NEW.idempotency_key,
                NEW.event_type);
    END IF;
    RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS test_log_insert_attempt ON sla_escalation_events;
CREATE TRIGGER test_log_insert_attempt BEFORE INSERT ON sla_escalation_events
    FOR EACH ROW EXECUTE FUNCTION test_log_insert_attempt();
DROP TRIGGER IF EXISTS test_log_insert_attempt ON outbox_events;
CREATE TRIGGER test_log_insert_attempt BEFORE INSERT ON outbox_events
    FOR EACH ROW EXECUTE FUNCTION test_log_insert_attempt();
"""

# Attempts beyond the first at the same step row or event key.
_DUPLICATES = f"""
SELECT table_name, tenant_id, timer_id,
       coalesce(escalation_step::text, idempotency_key) AS what, count(*) AS attempts
FROM {TABLE}
WHERE (%(event_types)s::text[] IS NULL OR table_name = 'sla_escalation_events'
       OR event_type = ANY(%(event_types)s::text[]))
GROUP BY table_name, tenant_id, timer_id, coalesce(escalation_step::text, idempotency_key)
HAVING count(*) > 1
ORDER BY 1, 2, 3, 4
"""

# The first attempt at each step row against the step's own due instant.
_STEP_TIMES = f"""
SELECT a.timer_id, a.escalation_step, min(a.seen_at) AS observed,
       t.due_at + make_interval(secs => (s.config ->> 'after_seconds')::float) AS due
FROM {TABLE} a
JOIN sla_timers t ON t.id = a.timer_id
CROSS JOIN LATERAL (
    SELECT x AS config FROM jsonb_array_elements(t.escalation_steps) AS x
    WHERE (x ->> 'step')::int = a.escalation_step
) AS s
WHERE a.table_name = 'sla_escalation_events' AND a.outcome <> 'SKIPPED'
GROUP BY a.timer_id, a.escalation_step, t.due_at, s.config
ORDER BY a.timer_id, a.escalation_step
"""


def _rows(conn: Any, sql: str, params: dict | None = None) -> list[tuple]:
    """Run ``sql`` (psycopg placeholders) on a psycopg or SQLAlchemy connection."""
    if hasattr(conn, "exec_driver_sql"):  # SQLAlchemy: its psycopg driver takes %(x)s
        return [tuple(r) for r in conn.exec_driver_sql(sql, params or {}).all()]
    cur = conn.execute(sql, params or {})
    return [tuple(r) for r in cur.fetchall()] if cur.description else []


def _run(conn: Any, sql: str) -> None:
    if hasattr(conn, "exec_driver_sql"):
        conn.exec_driver_sql(sql)
    else:
        conn.execute(sql)


def install(conn: Any) -> None:
    """Create the side table and the triggers (the tables' owner only)."""
    _run(conn, INSTALL)


def reset(conn: Any) -> None:
    _run(conn, f"TRUNCATE {TABLE} RESTART IDENTITY")


def duplicate_attempts(conn: Any, event_types: list[str] | None = None) -> list[tuple]:
    """(table, tenant, timer, step or key, attempts) of every step row or event
    attempted more than once; ``event_types`` limits the events looked at."""
    return _rows(conn, _DUPLICATES, {"event_types": event_types})


def step_times(conn: Any) -> list[tuple]:
    """(timer, step, first attempt as the database saw it, the step's due instant)
    for every step that was attempted (cancel's SKIPPED rows aside)."""
    return _rows(conn, _STEP_TIMES)


def early_steps(conn: Any) -> list[tuple]:
    """The steps of :func:`step_times` first attempted before their due instant."""
    return [row for row in step_times(conn) if row[2] < row[3]]


def attempts(conn: Any, table: str = "sla_escalation_events") -> int:
    return _rows(conn, f"SELECT count(*) FROM {TABLE} WHERE table_name = %(t)s", {"t": table})[0][0]
