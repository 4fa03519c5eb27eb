"""Wake-ups: delayed Dramatiq messages that make due timers fire on time.

Only instants within the horizon are scheduled (Dramatiq's delay queue is a
FIFO list that workers hold in memory, so far-future messages would delay
near ones). Instants are rounded up to a bucket and deduplicated with
``sla:wakeup:<epoch_ms>`` keys, so a burst of timers due together costs one
message. A lost wake-up only makes a timer wait for the next sweep.

Wake-ups are sent by actor name through the broker (``WAKE_UP``), as the boot
sweep sends its sweep: the actors module imports this one, never the reverse.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import cache

import redis

from models.config import get_settings
from models.db import get_maintenance_engine
from models.sla import utcnow, wakeup_instant

from .broker import broker, redis_client
from .delivery import wake_delivery
from .firing import FireReport, fire_due

log = logging.getLogger(__name__)

# The actor's name (tasks/actors.py declares it; importing ``tasks`` does).
WAKE_UP = "wake_up"
KEY = "sla:wakeup:{}"
# Keep the dedupe key a little past the instant, then let it go.
KEY_GRACE_MS = 5_000


@cache
def _redis() -> redis.Redis:
    return redis_client(get_settings())


def _wake_up():
    return broker.get_actor(WAKE_UP)


def schedule_wakeups(instants: Iterable[datetime], *, now: datetime | None = None) -> int:
    """Enqueue one wake-up per bucket within the horizon; returns how many were sent.

    Never raises for a Redis failure: the timers are safe in PostgreSQL.
    """
    settings = get_settings()
    now = now or utcnow()
    horizon = now + timedelta(seconds=settings.wakeup_horizon_seconds)
    buckets = sorted(
        {wakeup_instant(i, settings.wakeup_bucket_ms) for i in instants if i <= horizon}
    )
    if not buckets:
        return 0
    now_ms = int(now.timestamp() * 1000)
    etas = [int(b.timestamp() * 1000) for b in buckets]
    # Sent a little early: the actor sleeps out the rest, which absorbs the
    # broker's polling delay so that timers fire on their instant.
    lead = settings.wakeup_lead_ms
    sent = 0
    try:
        pipe = _redis().pipeline(transaction=False)
        for eta in etas:
            pipe.set(KEY.format(eta), 1, nx=True, px=max(0, eta - now_ms) + KEY_GRACE_MS)
        for eta, fresh in zip(etas, pipe.execute(), strict=True):
            if fresh:
                delay = eta - now_ms - lead
                _wake_up().send_with_options(args=(eta,), delay=delay if delay > 0 else None)
                sent += 1
    except redis.RedisError as exc:
        log.warning("could not schedule wake-ups (the sweeper will fire these timers): %s", exc)
    return sent


def fire_with_help(*, fan_out: bool = True) -> FireReport:
    """Run the firing routine. As soon as a batch comes back full (a burst),
    ask other workers to join with immediate wake-ups, before the batch is
    written: they claim disjoint rows, so the burst drains at the speed of
    every worker, not one."""
    engine, settings = get_maintenance_engine(), get_settings()

    def ask_for_help() -> None:
        try:
            for _ in range(settings.fire_parallelism - 1):
                _wake_up().send_with_options(kwargs={"fan_out": False})
        except redis.RedisError as exc:
            log.warning("could not ask for help with a burst: %s", exc)

    report = fire_due(engine, settings, on_full_batch=ask_for_help if fan_out else None)
    if report.became_due or report.steps or report.dead_lettered:
        wake_delivery()  # the batches committed events: send them
    schedule_wakeups(report.next_fire_times)
    return report
