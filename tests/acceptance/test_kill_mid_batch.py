"""A worker SIGKILLed inside its apply transaction, mid-batch.

A real ``dramatiq`` worker claims a batch of due timers (its boot sweep) and
stops inside the statement that writes their step rows: a test trigger on
``sla_escalation_events`` waits for an advisory lock the test holds. The
worker is SIGKILLed there. PostgreSQL rolls its transaction back, the rows
stay PROCESSING until their (short) lease expires, and a new worker's boot
sweep rescues and fires them: one step row and one event per step, and no
committed duplicate attempt (tests/support/attempt_log.py), none early.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from devtools.processes import Service
from tests.support import attempt_log
from tests.support.common import wait_until
from tests.support.factories import overdue, start_timer

BIN = Path(sys.executable).parent
LEASE_S = 2
STALL_LOCK = 8_008_001  # the advisory lock the stalled insert waits for

_STALL = f"""
CREATE OR REPLACE FUNCTION test_stall_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared({STALL_LOCK});
    RETURN NEW;
END $$;
DROP TRIGGER IF EXISTS test_stall_insert ON sla_escalation_events;
CREATE TRIGGER test_stall_insert BEFORE INSERT ON sla_escalation_events
    FOR EACH ROW EXECUTE FUNCTION test_stall_insert();
"""

_STALLED = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND wait_event_type = 'Lock' AND wait_event = 'advisory'
"""


def as_owner(engine, sql: str):
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")  # DDL and pg_stat_activity in full
        result = conn.exec_driver_sql(sql)
        return result.all() if result.returns_rows else None


@contextmanager
def inserts_of_step_rows_stalled(engine) -> Iterator[None]:
    """While open, a transaction that inserts a step row waits inside that INSERT."""
    holder = engine.connect()
    try:
        holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": STALL_LOCK})
        holder.commit()
        as_owner(engine, _STALL)
        try:
            yield
        finally:
            # Let the stalled backend go first: its client is gone, so it rolls back.
            holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": STALL_LOCK})
            holder.commit()
            wait_until(lambda: as_owner(engine, _STALLED)[0][0] == 0, 30, "no stalled insert")
            as_owner(engine, "DROP TRIGGER test_stall_insert ON sla_escalation_events")
    finally:
        holder.close()


def start_worker(log: Path) -> Service:
    env = {**os.environ, "SLA_LEASE_SECONDS": str(LEASE_S)}
    return Service(
        [str(BIN / "dramatiq"), "tasks", "--processes", "1", "--threads", "2"],
        env,
        log,
        ready="is ready for action",
    )


def timer_states(engine, ids: list) -> list[tuple]:
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT status, processing_status, lease_expires_at < now() FROM sla_timers "
                "WHERE id = ANY(:ids)"
            ),
            {"ids": ids},
        ).all()


def test_a_worker_killed_inside_its_apply_transaction_loses_and_repeats_nothing(
    engine, tenant, tmp_path
):
    n = 5
    ids = [start_timer(engine, tenant[0], started_at=overdue())["id"] for _ in range(n)]

    with inserts_of_step_rows_stalled(engine):
        worker = start_worker(tmp_path / "worker.log")  # its boot sweep claims the batch
        try:
            wait_until(lambda: as_owner(engine, _STALLED)[0][0] >= 1, 30, "the stalled apply")
            # Claimed (committed) and inside the apply statement, its step rows half-written.
            assert {s[:2] for s in timer_states(engine, ids)} == {("ACTIVE", "PROCESSING")}
        finally:
            worker.kill()
    with engine.connect() as conn:  # the killed transaction left nothing
        assert conn.execute(text("SELECT count(*) FROM sla_escalation_events")).scalar() == 0
        assert attempt_log.attempts(conn) == 0

    # Once the lease has expired, a new worker's boot sweep rescues and fires the batch.
    wait_until(
        lambda: all(s[2] for s in timer_states(engine, ids)), LEASE_S + 10, "the lease to expire"
    )
    worker = start_worker(tmp_path / "worker2.log")
    try:
        wait_until(
            lambda: {s[:2] for s in timer_states(engine, ids)} == {("ESCALATED", "COMPLETED")},
            30,
            "the rescued timers to fire",
        )
    finally:
        worker.stop()

    with engine.connect() as conn:
        steps = conn.execute(
            text("SELECT timer_id, count(*) FROM sla_escalation_events GROUP BY 1")
        ).all()
        events = conn.execute(
            text("SELECT event_type, count(*) FROM outbox_events GROUP BY 1 ORDER BY 1")
        ).all()
        assert sorted(t for t, _ in steps) == sorted(ids) and {c for _, c in steps} == {1}
        assert events == [
            ("sla.escalation.triggered", n),
            ("sla.timer.due", n),
            ("sla.timer.started", n),
        ]
        # Only the second worker's attempts committed, each step and event once.
        assert attempt_log.attempts(conn) == n
        assert attempt_log.duplicate_attempts(conn) == []
        assert attempt_log.early_steps(conn) == []
