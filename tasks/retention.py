"""Retention, hourly (periodiq): closed timers after SLA_RETENTION_DAYS and
delivered events after SLA_OUTBOX_RETENTION_DAYS are deleted in bounded
batches (models/retention.py). Any number of schedulers may tick it: one run
at a time holds an advisory lock, the others return at once. A run that
misses a tick or fails costs nothing but disk: the next one takes what is left.
"""

from __future__ import annotations

import logging

import dramatiq
from periodiq import cron

from models import retention
from models.config import get_settings
from models.db import get_maintenance_engine
from models.errors import is_outage

from .actors import TickActor
from .broker import QUEUE

log = logging.getLogger(__name__)

# A first run after a long outage, or at a million finished rows, takes
# minutes; Dramatiq's default limit (10 min) would cut it short.
TIME_LIMIT_MS = 60 * 60 * 1000


@dramatiq.actor(
    queue_name=QUEUE,
    periodic=cron("23 * * * *"),
    max_retries=0,
    time_limit=TIME_LIMIT_MS,
    actor_class=TickActor,
)
def apply_retention() -> None:
    settings = get_settings()
    try:
        retention.run(
            get_maintenance_engine(),
            timer_days=settings.retention_days,
            event_days=settings.outbox_retention_days,
            batch=settings.retention_batch_size,
        )
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("retention skipped, the database is unreachable: %s", exc)
