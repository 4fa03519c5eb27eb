"""Broker, actors, sweeper and firing routine.

``dramatiq tasks`` runs the workers and ``python -m tasks.scheduler`` the
scheduler (periodiq, plus firing from PostgreSQL while Redis is unreachable):
importing this package sets the broker and declares every actor.
"""

from .broker import broker
from .actors import deliver, sweep, wake_up
from .retention import apply_retention
from .stats import fold_stats

__all__ = ["apply_retention", "broker", "deliver", "fold_stats", "sweep", "wake_up"]
