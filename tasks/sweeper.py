"""The sweeper: the safety net that makes Redis optional for correctness.

Every minute (periodiq), on any number of schedulers at once:

1. return rows whose lease expired (their worker died mid-batch) to PENDING;
2. fire everything due, through the same routine as the wake-up actor;
3. schedule wake-ups for timers entering the horizon.

Each step is safe to run concurrently: the rescue and the claim use
SKIP LOCKED, and wake-ups are deduplicated in Redis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from models import repository as repo
from models.config import get_settings
from models.db import get_maintenance_engine
from models.sla import utcnow

from .firing import FireReport
from .wakeups import fire_with_help, schedule_wakeups

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    rescued: int
    fired: FireReport
    wakeups: int


def sweep_once() -> SweepReport:
    settings = get_settings()
    engine = get_maintenance_engine()
    with engine.begin() as conn:
        rescued = repo.rescue_expired_leases(conn, utcnow())
    if rescued:
        log.warning("rescued %d timers whose worker was lost", rescued)
    fired = fire_with_help()
    now = utcnow()
    with engine.begin() as conn:
        upcoming = repo.upcoming_fire_times(
            conn, now, now + timedelta(seconds=settings.wakeup_horizon_seconds)
        )
    # Includes the later steps and retries the firing above just stored.
    wakeups = schedule_wakeups(upcoming, now=now)
    log.info(
        "sweep: rescued=%d claimed=%d steps=%d failures=%d wakeups=%d",
        rescued,
        fired.claimed,
        fired.steps,
        fired.failures,
        wakeups,
    )
    return SweepReport(rescued, fired, wakeups)
