"""The stats rollup's fold: each minute, every tenant's closes since the last
fold go into ``sla_stats_rollup`` (models/stats.py). A missed or failed fold
costs nothing but speed: the stats count what is not folded yet live."""

from __future__ import annotations

import logging

import dramatiq
from periodiq import cron

from models.db import get_maintenance_engine
from models.errors import is_outage
from models.stats import fold_all

from .actors import TickActor
from .broker import QUEUE

log = logging.getLogger(__name__)


@dramatiq.actor(queue_name=QUEUE, periodic=cron("* * * * *"), max_retries=0, actor_class=TickActor)
def fold_stats() -> None:
    try:
        fold_all(get_maintenance_engine())
    except Exception as exc:
        if not is_outage(exc):
            raise
        log.warning("stats fold skipped, the database is unreachable: %s", exc)
