"""Wake-ups: delayed Dramatiq messages that make due timers fire on time.

Only instants within the horizon are scheduled (Dramatiq's delay queue is a
FIFO list that workers hold in memory, so far-future messages would delay
near ones). Instants are rounded up to a bucket and deduplicated with
``sla:wakeup:<epoch_ms>`` keys, so a burst of timers due together costs one
message. A lost wake-up only makes a timer wait for the next sweep.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from functools import cache

import redis

from models.config import get_settings
from models.sla import utcnow, wakeup_instant

from .broker import redis_client

log = logging.getLogger(__name__)

KEY = "sla:wakeup:{}"
# Keep the dedupe key a little past the instant, then let it go.
KEY_GRACE_MS = 5_000


@cache
def _redis() -> redis.Redis:
    return redis_client(get_settings())


def schedule_wakeups(instants: Iterable[datetime], *, now: datetime | None = None) -> int:
    """Enqueue one wake-up per bucket within the horizon; returns how many were sent.

    Never raises for a Redis failure: the timers are safe in PostgreSQL.
    """
    from .actors import wake_up  # the actor module imports this one

    settings = get_settings()
    now = now or utcnow()
    horizon = now + timedelta(seconds=settings.wakeup_horizon_seconds)
    buckets = sorted(
        {wakeup_instant(i, settings.wakeup_bucket_ms) for i in instants if i <= horizon}
    )
    if not buckets:
        return 0
    now_ms = int(now.timestamp() * 1000)
    targets = [
        (int(b.timestamp() * 1000), max(0, int(b.timestamp() * 1000) - now_ms)) for b in buckets
    ]
    sent = 0
    try:
        pipe = _redis().pipeline(transaction=False)
        for eta_ms, delay_ms in targets:
            pipe.set(KEY.format(eta_ms), 1, nx=True, px=delay_ms + KEY_GRACE_MS)
        for (eta_ms, delay_ms), fresh in zip(targets, pipe.execute(), strict=True):
            if fresh:
                wake_up.send_with_options(args=(eta_ms,), delay=delay_ms or None)
                sent += 1
    except redis.RedisError as exc:
        log.warning("could not schedule wake-ups (the sweeper will fire these timers): %s", exc)
    return sent
