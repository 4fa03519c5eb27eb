"""Several schedulers rescue expired leases at once: each row exactly once.

Every scheduler's sweep starts with ``rescue_expired_leases``. Here several
connections run it at the same instant over the same expired rows, and all
of them keep their transaction open until every other one has either
finished its statement or is waiting for a lock, so the rescues overlap for
certain; only then do they commit. A rescue that took rows another one holds
(rather than skipping them) would wait for that one's commit and rescue them
again: two attempts counted, or two dead letters written.
"""

from __future__ import annotations

import threading

from sqlalchemy import text

from models import firing as firing_sql
from tests.support import attempt_log
from tests.support.common import wait_until

ROWS = 400
RESCUERS = 4

_SEED_EXPIRED = """
INSERT INTO sla_timers (
    id, tenant_id, lead_id, sla_contract_id, started_at, due_at, window_seconds,
    correlation_id, escalation_steps, next_fire_at, processing_status, claim_token,
    lease_expires_at, last_attempt_at)
SELECT gen_random_uuid(), :tenant, 'lead-' || g, 'default', now() - interval '2 minutes',
       now() - interval '1 minute', 60, 'c-' || g,
       '[{"step": 1, "after_seconds": 0, "action": "notify", "target": null}]'::jsonb,
       now() - interval '1 minute', 'PROCESSING', gen_random_uuid(),
       now() - interval '1 second', now() - interval '1 minute'
FROM generate_series(1, :n) AS g
"""

_BUSY = """
SELECT pid, state, wait_event_type FROM pg_stat_activity WHERE pid = ANY(%(pids)s)
"""


def rescue_all_at_once(engine, max_attempts: int) -> list[int]:
    """What each of RESCUERS overlapping rescues returned."""
    start, commit = threading.Barrier(RESCUERS), threading.Event()
    pids: list[int] = []
    returned: list[int] = []
    finished: list[int] = []
    errors: list[BaseException] = []

    def rescuer():
        try:
            with engine.connect() as conn:
                pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
                pids.append(pid)
                start.wait(10)
                returned.append(firing_sql.rescue_expired_leases(conn, max_attempts))
                finished.append(pid)
                assert commit.wait(30), "never told to commit"
                conn.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rescuer) for _ in range(RESCUERS)]
    for t in threads:
        t.start()

    def all_done_or_blocked():
        if errors:
            return True
        if len(pids) < RESCUERS:
            return False
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL ROLE NONE")  # other sessions' wait events
            rows = conn.exec_driver_sql(_BUSY, {"pids": list(pids)}).all()
        blocked = {pid for pid, state, wait in rows if state == "active" and wait == "Lock"}
        return len(set(finished) | blocked) == RESCUERS

    try:
        wait_until(all_done_or_blocked, 30, "every rescue to finish or wait for a lock")
    finally:
        commit.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert len(returned) == RESCUERS
    return returned


def test_overlapping_rescues_take_each_row_once(engine, tenant):
    with engine.begin() as conn:
        conn.execute(text(_SEED_EXPIRED), {"tenant": tenant[0], "n": ROWS})

    returned = rescue_all_at_once(engine, max_attempts=5)

    assert sum(returned) == ROWS, returned
    with engine.connect() as conn:
        states = conn.execute(
            text("SELECT processing_status, attempts, count(*) FROM sla_timers GROUP BY 1, 2")
        ).all()
    # One attempt counted per row: none was rescued twice, none left behind.
    assert states == [("PENDING", 1, ROWS)]


def test_overlapping_rescues_dead_letter_each_row_once(engine, tenant):
    rows = ROWS
    with engine.begin() as conn:
        conn.execute(text(_SEED_EXPIRED), {"tenant": tenant[0], "n": rows})

    returned = rescue_all_at_once(engine, max_attempts=1)

    assert sum(returned) == rows, returned
    with engine.connect() as conn:
        states = conn.execute(
            text("SELECT processing_status, attempts, count(*) FROM sla_timers GROUP BY 1, 2")
        ).all()
        assert states == [("FAILED", 1, rows)]
        # The dead letter's event: attempted once per timer, not once per rescuer.
        assert attempt_log.attempts(conn, "outbox_events") == rows
        assert attempt_log.duplicate_attempts(conn) == []
