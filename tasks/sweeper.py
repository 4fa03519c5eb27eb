"""The sweeper: the safety net that makes Redis optional for correctness.

Every minute (periodiq), on any number of schedulers at once:

0. ask for a webhook delivery loop (tasks/delivery.py), whatever the wake
   flag says: deliveries whose wake-up was lost, or whose retry lies beyond
   the wake-up horizon, go out within a minute;
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

from sqlalchemy import Engine

from models import firing as firing_sql
from models import metrics
from models.config import Settings, get_settings
from models.db import get_maintenance_engine
from models.sla import utcnow

from .delivery import wake_delivery
from .firing import FireReport
from .wakeups import fire_with_help, schedule_wakeups

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    rescued: int
    fired: FireReport
    wakeups: int


def rescue_lost_work(engine: Engine) -> int:
    """Step 1: return rows whose lease expired to PENDING (an attempt each; the
    last one dead-letters), by the database's clock."""
    with engine.begin() as conn:
        rescued = firing_sql.rescue_expired_leases(conn, get_settings().max_attempts)
    if rescued:
        log.warning("rescued %d timers whose worker was lost", rescued)
    return rescued


def schedule_horizon(engine: Engine, settings: Settings) -> int:
    """Step 3: a wake-up for every bucket of the horizon that holds a PENDING
    timer (those already sent are deduplicated in Redis); how many were sent."""
    now = utcnow()
    with engine.begin() as conn:
        upcoming = firing_sql.upcoming_fire_times(
            conn,
            now,
            now + timedelta(seconds=settings.wakeup_horizon_seconds),
            settings.wakeup_bucket_ms,
        )
    return schedule_wakeups(upcoming, now=now)


def sweep_once() -> SweepReport:
    settings = get_settings()
    engine = get_maintenance_engine()
    try:
        wake_delivery(force=True)
        rescued = rescue_lost_work(engine)
        fired = fire_with_help()
        # Includes the later steps and retries the firing above just stored.
        wakeups = schedule_horizon(engine, settings)
    except Exception:
        metrics.SWEEPS.labels("error").inc()
        raise
    metrics.SWEEPS.labels("ok").inc()
    log.info(
        "sweep: rescued=%d claimed=%d steps=%d failures=%d wakeups=%d",
        rescued,
        fired.claimed,
        fired.steps,
        fired.failures,
        wakeups,
    )
    return SweepReport(rescued, fired, wakeups)
