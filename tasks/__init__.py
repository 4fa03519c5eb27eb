"""Broker, actors, sweeper and firing routine.

``dramatiq tasks`` runs the workers and ``periodiq tasks`` the scheduler:
importing this package sets the broker and declares every actor.
"""

from .broker import broker
from .actors import sweep, wake_up

__all__ = ["broker", "sweep", "wake_up"]
