"""Dramatiq actors: the wake-up (a hint to fire now) and the periodic sweep."""

from __future__ import annotations

import logging
import time

import dramatiq
from periodiq import cron

from models.config import get_settings
from models.db import get_engine

from .broker import QUEUE
from .firing import fire_due
from .sweeper import sweep_once
from .wakeups import schedule_wakeups

log = logging.getLogger(__name__)

# A wake-up that arrives a little early (worker clocks, rounding) waits for its
# instant rather than finding nothing due and leaving the timer to the sweep.
MAX_EARLY_WAIT_S = 2.0


@dramatiq.actor(queue_name=QUEUE, max_retries=3, min_backoff=500, max_backoff=5_000)
def wake_up(eta_ms: int | None = None) -> None:
    """Fire whatever is due. Duplicate, late or spurious wake-ups are harmless."""
    if eta_ms is not None:
        early = eta_ms / 1000 - time.time()
        if early > MAX_EARLY_WAIT_S:
            wake_up.send_with_options(args=(eta_ms,), delay=int(early * 1000))
            return
        if early > 0:
            time.sleep(early)
    report = fire_due(get_engine(), get_settings())
    if report.next_fire_times:
        schedule_wakeups(report.next_fire_times)


@dramatiq.actor(queue_name=QUEUE, periodic=cron("* * * * *"), max_retries=0)
def sweep() -> None:
    sweep_once()
