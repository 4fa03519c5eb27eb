"""Real worker and scheduler processes through a Redis outage.

The ``dramatiq`` worker and the scheduler (``python -m tasks.scheduler``, the
Procfile's) reach Redis through an ``OutageProxy`` (tests/support/outage_proxy.py);
PostgreSQL is the real one. Timers are written straight to the database,
without wake-ups. While Redis is refused, the ones falling due fire within
2 s of their instant (the database's clock, tests/support/attempt_log.py), from the
database alone; once it is back the scheduler sends the wake-ups of the
horizon again, a timer started during the outage fires on time through its
wake-up, and nothing fired twice.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import text

from devtools.processes import Service
from models.sla import utcnow, wakeup_instant
from tests.support import attempt_log
from tests.support.common import redis_conn, wait_until
from tests.support.factories import start_timer
from tests.support.outage_proxy import OutageProxy
from tests.support.stack import worker_and_scheduler

LATENESS_BOUND_S = 2.0


@pytest.fixture
def redis_proxy() -> Iterator[OutageProxy]:
    with OutageProxy.for_url(os.environ["REDIS_URL"]) as proxy:
        yield proxy


@pytest.fixture
def processes(engine, redis_proxy, tmp_path) -> Iterator[tuple[Service, Service]]:
    env = {
        **os.environ,
        "REDIS_URL": redis_proxy.url_for(os.environ["REDIS_URL"]),
        "SLA_REDIS_TIMEOUT_SECONDS": "1",
        "SLA_REDIS_CHECK_MS": "100",
        "SLA_DIRECT_POLL_MS": "100",
    }
    with worker_and_scheduler(env, tmp_path) as processes:
        yield processes


def due_in(engine, tenant_id, seconds: float) -> dict:
    """A 60 s timer due ``seconds`` from now, written without a wake-up."""
    return start_timer(engine, tenant_id, started_at=utcnow() + timedelta(seconds=seconds - 60))


def fired(engine, timers: list[dict]) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM sla_escalation_events WHERE timer_id = ANY(:ids)"),
            {"ids": [t["id"] for t in timers]},
        ).scalar_one()


def lateness(engine) -> dict:
    """Timer id -> seconds from due to the step row reaching the database."""
    with engine.begin() as conn:
        conn.exec_driver_sql("SET LOCAL ROLE NONE")  # the log is the owner's
        rows = attempt_log.step_times(conn)
        assert attempt_log.duplicate_attempts(conn) == []
    return {timer_id: (observed - due).total_seconds() for timer_id, _, observed, due in rows}


def alive(*services: Service) -> bool:
    return all(s.proc.poll() is None for s in services)


def test_timers_fire_from_the_database_while_redis_is_down_and_wake_ups_resume(
    engine, settings, tenant, redis_proxy, processes
):
    scheduler_log = processes[1].log
    redis_proxy.down("refuse")
    down_at = time.monotonic()
    timers = [due_in(engine, tenant[0], 1 + 0.5 * i) for i in range(6)]
    # Enters the horizon during the outage; due after the scheduler hands back.
    later = due_in(engine, tenant[0], 16)
    wait_until(lambda: fired(engine, timers) == len(timers), 10, "the outage's timers to fire")
    assert redis_proxy.mode == "refuse"
    late = lateness(engine)
    print(f"\n[redis outage] processes: lateness max {max(late.values()) * 1000:.0f} ms")
    assert all(0 <= late[t["id"]] <= LATENESS_BOUND_S for t in timers), late
    wait_until(lambda: time.monotonic() - down_at > 5, 6, "five seconds of outage")
    assert fired(engine, [later]) == 0

    redis_proxy.up()
    # The scheduler sends the horizon's wake-ups again, the later timer's among them.
    bucket = int(wakeup_instant(later["due_at"], settings.wakeup_bucket_ms).timestamp() * 1000)
    wait_until(lambda: redis_conn().exists(f"sla:wakeup:{bucket}"), 5, "its wake-up")
    wait_until(
        lambda: "direct firing stopped" in scheduler_log.read_text(), 10, "direct firing to stop"
    )
    assert fired(engine, [later]) == 0  # not yet due: the wake-up fires it
    wait_until(lambda: fired(engine, [later]) == 1, 20, "the later timer")
    assert 0 <= lateness(engine)[later["id"]] <= 1.0
    log = scheduler_log.read_text()
    assert log.count("Redis is unreachable") == 1
    assert alive(*processes), "a worker or the scheduler died in the outage"
