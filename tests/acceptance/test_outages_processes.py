"""Real worker and scheduler processes through a PostgreSQL outage.

The ``dramatiq`` worker and the ``periodiq`` scheduler reach PostgreSQL through
an ``OutageProxy`` (tests/outage_proxy.py); Redis is the real one. PostgreSQL is
cut while timers fall due. Afterwards both processes are still running (no
restart), every timer that fell due during the outage fires, each step exactly
once, and a timer started after the outage fires on time.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from bench.common import Service
from tests.conftest import wait_until
from tests.outage_proxy import OutageProxy

BIN = Path(sys.executable).parent
CONNECT_TIMEOUT_S = 2  # psycopg's minimum


@pytest.fixture
def pg_proxy() -> Iterator[OutageProxy]:
    with OutageProxy.for_url(os.environ["DATABASE_URL"]) as proxy:
        yield proxy


@pytest.fixture
def processes(engine, pg_proxy, tmp_path) -> Iterator[tuple[Service, Service]]:
    env = {
        **os.environ,
        "DATABASE_URL": pg_proxy.url_for(os.environ["DATABASE_URL"]),
        "SLA_DB_CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT_S),
    }
    worker = Service(
        [str(BIN / "dramatiq"), "tasks", "--processes", "1", "--threads", "4"],
        env,
        tmp_path / "worker.log",
        ready="is ready for action",
    )
    try:
        scheduler = Service(
            [str(BIN / "periodiq"), "tasks"],
            env,
            tmp_path / "scheduler.log",
            ready="tasks.actors:sweep@sla",
        )
    except BaseException:
        worker.stop()
        raise
    yield worker, scheduler
    for service in (scheduler, worker):
        service.stop()


@pytest.fixture
def client(engine, tenant):
    """The API, straight to PostgreSQL: the outage is the workers' alone."""
    from web import create_app

    c = create_app().test_client()
    c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tenant[1]}"
    return c


def start_due_at(client, lead: str, due: datetime) -> str:
    started = due - timedelta(seconds=60)
    response = client.post(
        "/v1/timers",
        json={"lead_id": lead, "window_seconds": 60, "started_at": started.isoformat()},
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()["id"]


def fired(engine, ids: list[str]) -> tuple[int, int, int]:
    """(escalated timers, step rows, distinct steps) among ``ids``."""
    with engine.connect() as conn:
        return conn.execute(
            text(
                """
                SELECT (SELECT count(*) FROM sla_timers
                        WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'ESCALATED'),
                       count(*), count(DISTINCT (timer_id, escalation_step))
                FROM sla_escalation_events WHERE timer_id = ANY(CAST(:ids AS uuid[]))
                """
            ),
            {"ids": ids},
        ).one()


def alive(*services: Service) -> bool:
    return all(s.proc.poll() is None for s in services)


def outage_while_timers_fall_due(
    engine, client, pg_proxy, processes, mode: str, outage_s: float, fire_within_s: float
) -> None:
    now = datetime.now(UTC)
    # All due early in the outage: their wake-ups meet a database that stays away.
    dues = [now + timedelta(seconds=0.5 + i * 0.3) for i in range(6)]
    ids = [start_due_at(client, f"during-{i}", due) for i, due in enumerate(dues)]
    pg_proxy.down(mode)
    time.sleep(outage_s)
    assert fired(engine, ids)[0] == 0  # nothing could fire: the database was away
    pg_proxy.up()

    back = time.monotonic()
    wait_until(
        lambda: fired(engine, ids)[0] == len(ids), fire_within_s, "the outage's timers to fire"
    )
    recovered = time.monotonic() - back
    print(f"\n[outage bound] processes, {mode} {outage_s:.0f} s: fired {recovered:.1f} s after")
    assert alive(*processes), "a worker or the scheduler died in the outage"
    time.sleep(0.5)  # a duplicate would show up now
    assert fired(engine, ids) == (len(ids), len(ids), len(ids))  # each step exactly once

    # The same processes, no restart: a new timer fires on time.
    due = datetime.now(UTC) + timedelta(seconds=1)
    after = start_due_at(client, "after", due)
    wait_until(lambda: fired(engine, [after])[0] == 1, 5, "a timer started after the outage")
    with engine.connect() as conn:
        late = conn.execute(
            text(
                "SELECT max(executed_at - t.due_at) FROM sla_escalation_events e "
                "JOIN sla_timers t ON t.id = e.timer_id WHERE t.id = :id"
            ),
            {"id": after},
        ).scalar_one()
    assert late < timedelta(seconds=2)
    assert alive(*processes)


def test_worker_and_scheduler_ride_out_a_blackholed_database(engine, client, pg_proxy, processes):
    # Each attempt during the outage waits out the connect timeout.
    outage_while_timers_fall_due(
        engine, client, pg_proxy, processes, "blackhole", outage_s=3, fire_within_s=8
    )


@pytest.mark.slow
def test_worker_and_scheduler_ride_out_a_refused_database(engine, client, pg_proxy, processes):
    outage_while_timers_fall_due(
        engine, client, pg_proxy, processes, "refuse", outage_s=12, fire_within_s=8
    )
