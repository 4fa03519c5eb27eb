"""End to end: the HTTP API, a real Dramatiq worker process and a real scheduler.

A timer started over HTTP fires on time through its wake-up; timers whose
wake-ups die with a SIGKILLed worker and a flushed Redis are fired by the
sweeper once a worker is back, each step exactly once and none early.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from bench.common import Service
from tests.conftest import redis_conn, wait_until

BIN = Path(sys.executable).parent


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


@pytest.fixture
def client(engine, tenant):
    from web import create_app

    app = create_app()
    c = app.test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant[1]}"
    return c


def counts(engine):
    with engine.connect() as conn:
        return conn.execute(
            text(
                """
                SELECT count(*) FILTER (WHERE status = 'ESCALATED'),
                       (SELECT count(*) FROM sla_escalation_events),
                       (SELECT count(DISTINCT (timer_id, escalation_step))
                        FROM sla_escalation_events),
                       (SELECT count(*) FROM sla_escalation_events e
                        JOIN sla_timers t ON t.id = e.timer_id
                        WHERE e.executed_at < t.due_at)
                FROM sla_timers
                """
            )
        ).one()


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
    assert counts(engine) == (1, 1, 1, 0)


def test_the_scheduler_registers_the_sweep(engine, tmp_path):
    scheduler = start(
        "scheduler", [str(BIN / "periodiq"), "tasks"], tmp_path, ready="tasks.actors:sweep@sla"
    )
    scheduler.stop()


def test_timers_survive_a_killed_worker_and_a_flushed_redis(engine, tmp_path, client):
    worker = start_worker(tmp_path)
    try:
        for i in range(30):
            body = {"lead_id": f"lead-{i}", "window_seconds": 2}
            assert client.post("/v1/timers", json=body).status_code == 201
        # The worker now holds the delayed wake-ups in memory; it dies, Redis is wiped.
        time.sleep(0.5)
    finally:
        worker.kill()  # also when a start failed: a stray worker would fire later tests' timers
    redis_conn().flushdb()
    time.sleep(2)
    assert counts(engine)[0] == 0  # nobody fired them

    # A restarted worker sweeps at boot, before the scheduler's next tick.
    worker = start_worker(tmp_path)
    try:
        wait_until(lambda: counts(engine)[0] == 30, 20, "the sweeper to fire every timer")
        escalated, steps, distinct_steps, early = counts(engine)
        assert (escalated, steps, distinct_steps, early) == (30, 30, 30, 0)
    finally:
        worker.stop()
