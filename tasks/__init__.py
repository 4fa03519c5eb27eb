"""Broker, actors, sweeper and firing routine.

``dramatiq tasks`` runs the workers and ``python -m tasks.scheduler`` the
scheduler (periodiq, plus firing from PostgreSQL while Redis is unreachable):
importing this package sets the broker and declares every actor.
"""

from .broker import broker
from .actors import deliver, sweep, wake_up

__all__ = ["broker", "deliver", "sweep", "wake_up"]
