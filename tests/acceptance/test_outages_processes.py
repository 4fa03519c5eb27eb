"""Real worker and scheduler processes through a PostgreSQL outage.

The ``dramatiq`` worker and the scheduler (``python -m tasks.scheduler``, as in
the Procfile) reach PostgreSQL through an ``OutageProxy`` (tests/support/outage_proxy.py);
Redis is the real one. PostgreSQL is cut while timers fall due. Afterwards both
processes are still running (no restart), every timer that fell due during the
outage fires, each step exactly once and none early by the database's own
record of insert attempts (tests/support/attempt_log.py), and a timer started after the
outage fires on time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from devtools.processes import Service
from tests.support import attempt_log
from tests.support.common import wait_until
from tests.support.outage_proxy import OutageProxy
from tests.support.stack import worker_and_scheduler

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
    with worker_and_scheduler(env, tmp_path) as processes:
        yield processes


def start_due_at(client, leads_and_dues: list[tuple[str, datetime]]) -> list[str]:
    """Start timers due at the given instants, in one bulk request."""
    timers = [
        {
            "lead_id": lead,
            "window_seconds": 60,
            "started_at": (due - timedelta(seconds=60)).isoformat(),
        }
        for lead, due in leads_and_dues
    ]
    response = client.post("/v1/timers/bulk", json={"timers": timers})
    assert response.status_code == 201, response.get_json()
    return [t["id"] for t in response.get_json()["items"]]


def fired(engine, ids: list[str]) -> tuple[int, int]:
    """(escalated timers, step rows) among ``ids``."""
    with engine.connect() as conn:
        return tuple(
            conn.execute(
                text(
                    """
                    SELECT (SELECT count(*) FROM sla_timers
                            WHERE id = ANY(CAST(:ids AS uuid[])) AND status = 'ESCALATED'),
                           count(*)
                    FROM sla_escalation_events WHERE timer_id = ANY(CAST(:ids AS uuid[]))
                    """
                ),
                {"ids": ids},
            ).one()
        )


def attempts_of(engine, ids: list[str]) -> tuple[list, list]:
    """(duplicate insert attempts, (observed - due) of each step) among ``ids``, as
    the database saw them (tests/support/attempt_log.py)."""
    with engine.connect() as conn:
        duplicates = [d for d in attempt_log.duplicate_attempts(conn) if str(d[2]) in ids]
        lateness = [t[2] - t[3] for t in attempt_log.step_times(conn) if str(t[0]) in ids]
    return duplicates, lateness


def alive(*services: Service) -> bool:
    return all(s.proc.poll() is None for s in services)


# The first timer falls due this long after its start: room for the start and
# the cut on a loaded machine, so that it really falls due during the outage.
FIRST_DUE_S = 1.5


def outage_while_timers_fall_due(
    engine, client, pg_proxy, processes, mode: str, outage_s: float, fire_within_s: float
) -> None:
    now = datetime.now(UTC)
    # All due early in the outage: their wake-ups meet a database that stays away.
    dues = [now + timedelta(seconds=FIRST_DUE_S + i * 0.3) for i in range(6)]
    ids = start_due_at(client, [(f"during-{i}", due) for i, due in enumerate(dues)])
    pg_proxy.down(mode)
    cut = datetime.now(UTC)
    assert cut < dues[0], f"the start took {cut - now}: raise FIRST_DUE_S"
    # The outage lasts outage_s, and at least until every timer is well past due.
    until = max(cut + timedelta(seconds=outage_s), dues[-1] + timedelta(seconds=1))
    time.sleep((until - datetime.now(UTC)).total_seconds())
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
    assert fired(engine, ids) == (len(ids), len(ids))
    # Each step attempted once (a retry's dropped duplicate counts), none early.
    duplicates, lateness = attempts_of(engine, ids)
    assert duplicates == []
    assert len(lateness) == len(ids) and min(lateness) >= timedelta(0), lateness

    # The same processes, no restart: a new timer fires on time.
    (after,) = start_due_at(client, [("after", datetime.now(UTC) + timedelta(seconds=1))])
    wait_until(lambda: fired(engine, [after])[0] == 1, 5, "a timer started after the outage")
    duplicates, lateness = attempts_of(engine, [after])
    assert duplicates == []
    assert timedelta(0) <= lateness[0] < timedelta(seconds=2), lateness
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
