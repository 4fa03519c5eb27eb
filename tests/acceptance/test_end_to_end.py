"""End to end: the HTTP API, a real Dramatiq worker process and a real scheduler.

A timer started over HTTP fires on time through its wake-up; timers whose
wake-ups die with a SIGKILLed worker and a flushed Redis are fired by the
sweeper once a worker is back, each step exactly once and none early. Both
are judged by the database's own record of insert attempts
(tests/support/attempt_log.py), not by the rows, which are unique anyway.
"""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from devtools.processes import Service
from tasks.broker import QUEUE
from tests.support import attempt_log
from tests.support.common import redis_conn, wait_until

BIN = Path(sys.executable).parent
# Dramatiq's delay queue: a list of message ids, the messages in a hash beside it.
DELAY_QUEUE = f"dramatiq:{QUEUE}.DQ"
DELAY_MSGS = f"{DELAY_QUEUE}.msgs"


def start(name: str, args: list[str], log_dir: Path, ready: str) -> Service:
    """A service process in its own session (a kill takes its children too);
    only lines it logs after starting count as ready."""
    return Service(args, os.environ.copy(), log_dir / f"{name}.log", ready=ready)


def start_worker(log_dir: Path) -> Service:
    return start(
        "worker",
        [str(BIN / "dramatiq"), "tasks", "--processes", "1", "--threads", "4"],
        log_dir,
        ready="is ready for action",
    )


@pytest.fixture
def worker(engine, tmp_path):
    proc = start_worker(tmp_path)
    yield proc
    proc.stop()


def counts(engine) -> tuple[int, int]:
    """(escalated timers, step rows)."""
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                text(
                    "SELECT count(*) FILTER (WHERE status = 'ESCALATED'), "
                    "(SELECT count(*) FROM sla_escalation_events) FROM sla_timers"
                )
            ).one()
        )


def assert_each_step_once_and_never_early(engine, timers: int) -> None:
    """From the insert attempts (tests/support/attempt_log.py): one committed attempt per
    step and event, each first seen by the database at or after its due instant."""
    with engine.connect() as conn:
        assert attempt_log.duplicate_attempts(conn) == []
        assert attempt_log.attempts(conn) == timers
        times = attempt_log.step_times(conn)
    assert len(times) == timers
    assert [t for t in times if t[2] < t[3]] == [], "a step fired before its due instant"


def test_a_timer_started_over_http_fires_through_its_wake_up(engine, worker, client):
    response = client.post("/v1/timers", json={"lead_id": "lead-42", "window_seconds": 2})
    assert response.status_code == 201, response.json
    timer_id = response.json["id"]

    def escalated():
        body = client.get(f"/v1/timers/{timer_id}").json
        return body if body["status"] == "ESCALATED" else None

    # Well before the next sweep could have fired it: the wake-up did.
    body = wait_until(escalated, 15, "the timer to escalate")
    assert [(e["step"], e["outcome"]) for e in body["escalations"]] == [(1, "SUCCESS")]
    assert counts(engine) == (1, 1)
    assert_each_step_once_and_never_early(engine, 1)


def test_the_scheduler_registers_the_sweep(engine, tmp_path):
    from periodiq import cron

    from tasks.actors import sweep

    # The sweep actor ticks every minute...
    assert sweep.options["periodic"] == cron("* * * * *")
    # ... and the scheduler process (the Procfile's) finds it there and stays up.
    scheduler = start(
        "scheduler",
        [str(BIN / "python"), "-m", "tasks.scheduler"],
        tmp_path,
        ready="tasks.actors:sweep@sla",
    )
    try:
        # periodiq's table of registered actors, one JSON line per row (models/logs.py).
        messages = [
            json.loads(line)["message"]
            for line in (tmp_path / "scheduler.log").read_text().splitlines()
            if line.startswith("{")
        ]
        registered = [
            found.groups()
            for message in messages
            if (found := re.fullmatch(r"\s*(\S+ \S+ \S+ \S+ \S+) +(\S+:\S+@\S+)\s*", message))
        ]
        assert ("* * * * *", f"tasks.actors:sweep@{QUEUE}") in registered, registered
        assert scheduler.proc.poll() is None
    finally:
        scheduler.stop()


WINDOW_S = 5  # room for the bulk start and the kill before the timers fall due


def test_timers_survive_a_killed_worker_and_a_flushed_redis(engine, tmp_path, client):
    worker = start_worker(tmp_path)
    try:
        body = {"timers": [{"lead_id": f"lead-{i}", "window_seconds": WINDOW_S} for i in range(30)]}
        response = client.post("/v1/timers/bulk", json=body)
        assert response.status_code == 201, response.json
        due = max(datetime.fromisoformat(t["due_at"]) for t in response.json["items"])
        # The worker fetches the delayed wake-up and holds it in memory...
        wait_until(
            lambda: redis_conn().llen(DELAY_QUEUE) == 0 and redis_conn().hlen(DELAY_MSGS),
            WINDOW_S - 1,
            "the worker to hold the wake-up",
        )
    finally:
        worker.kill()  # ... dies with it (also when a start failed: it would fire later tests)
    assert datetime.now(UTC) < due, "the kill came too late to test anything: raise WINDOW_S"
    redis_conn().flushdb()  # and Redis is wiped
    # Nobody fires them, even once they are due.
    wait_until(lambda: datetime.now(UTC) > due + timedelta(seconds=1), WINDOW_S + 5, "the due")
    assert counts(engine)[0] == 0

    # A restarted worker sweeps at boot, before the scheduler's next tick.
    worker = start_worker(tmp_path)
    try:
        wait_until(lambda: counts(engine)[0] == 30, 20, "the sweeper to fire every timer")
        assert counts(engine) == (30, 30)
        assert_each_step_once_and_never_early(engine, 30)
    finally:
        worker.stop()
