"""Per-tenant rate limit on the write endpoints, counted in Redis.

Redis keys (the ``limits`` library's layout):
``LIMITS:{LIMITER/sla-writes/<tenant>/<amount>/<multiples>/<unit>}``, sliding-window
counters shared by every API process. One tenant's burst cannot
starve the others, and a client over the limit gets 429 with Retry-After.

The limit is a guard, not part of the promise: when Redis fails, writes are let
through (the timer row is what matters, and a start must still answer 201 in a
Redis outage), and the limiter stands aside for a few seconds so an unreachable
Redis does not add its timeout to every request.
"""

from __future__ import annotations

import logging
import math
import time
from uuid import UUID

from limits import parse_many
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from .problems import ApiProblem, problem_type

log = logging.getLogger(__name__)

NAMESPACE = "sla-writes"
STAND_ASIDE_SECONDS = 5.0


class TenantRateLimit:
    def __init__(self, spec: str, redis_url: str, timeout_seconds: float) -> None:
        self.spec = spec
        self.items = parse_many(spec)
        storage = RedisStorage(
            redis_url,
            socket_timeout=timeout_seconds,
            socket_connect_timeout=timeout_seconds,
            wrap_exceptions=True,
        )
        self.limiter = SlidingWindowCounterRateLimiter(storage)
        self._skip_until = 0.0

    def check(self, tenant_id: UUID) -> None:
        """Count one write for the tenant; raise a 429 problem past the limit."""
        if time.monotonic() < self._skip_until:
            return
        tenant = str(tenant_id)
        try:
            for item in self.items:
                if not self.limiter.hit(item, NAMESPACE, tenant):
                    stats = self.limiter.get_window_stats(item, NAMESPACE, tenant)
                    retry = max(1, math.ceil(stats.reset_time - time.time()))
                    raise ApiProblem(
                        429,
                        f"this tenant's write limit of {item} is used up; retry in {retry} s",
                        type_=problem_type("rate-limited"),
                        title="Too Many Requests",
                        headers={"Retry-After": str(retry)},
                        limit=str(self.spec),
                    )
        except ApiProblem:
            raise
        except Exception as exc:  # the storage's errors, wrapped by limits
            self._skip_until = time.monotonic() + STAND_ASIDE_SECONDS
            log.warning("rate limit not enforced for %.0f s: %s", STAND_ASIDE_SECONDS, exc)
