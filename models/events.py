"""Outbox events: their idempotency keys and payloads (pure).

Each key names one event per (timer, kind[, n]); the unique index on
``(tenant_id, idempotency_key)`` turns a second write of the same event into a
no-op, whatever path or race produced it. ``n`` is the step for step events
(a repeat adds ``:r<repeat>``: ``<timer>:step:2:r3``), the threshold for
warnings, the pause's instant (epoch microseconds) for paused and resumed
events (a resume names the pause it ends) and, for failed and retried
events, the timer's ``retries`` (how many times a dead letter was re-armed): a
timer can be dead-lettered, retried and dead-lettered again, and each of these
gets its own event.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

STARTED = "sla.timer.started"
DUE = "sla.timer.due"
ESCALATION_TRIGGERED = "sla.escalation.triggered"
CANCELLED = "sla.timer.cancelled"
COMPLETED = "sla.timer.completed"
FAILED = "sla.timer.failed"
RETRIED = "sla.timer.retried"
WARNING = "sla.timer.warning"
PAUSED = "sla.timer.paused"
RESUMED = "sla.timer.resumed"

_KIND = {
    STARTED: "started",
    DUE: "due",
    ESCALATION_TRIGGERED: "step",
    CANCELLED: "cancelled",
    COMPLETED: "completed",
    FAILED: "failed",
    RETRIED: "retried",
    WARNING: "warning",
    PAUSED: "paused",
    RESUMED: "resumed",
}
# Numbered by the timer's retries counter, not fixed for the timer's life.
PER_RETRY = (FAILED, RETRIED)


def event_key(
    timer_id: UUID | str, event_type: str, n: int | None = None, *, repeat: int = 0
) -> str:
    key = f"{timer_id}:{_KIND[event_type]}"
    if n is not None:
        key = f"{key}:{n}"
    # A step's first run keeps the key it always had; its repeats get their own.
    return f"{key}:r{repeat}" if repeat else key


def pause_key(paused_at: datetime) -> int:
    """Numbers a pause and the resume that ends it (epoch microseconds)."""
    return round(paused_at.timestamp() * 1_000_000)


def timer_event(
    timer: Mapping[str, Any],
    event_type: str,
    occurred_at: datetime,
    *,
    step: int | None = None,
    repeat: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """An outbox row for ``timer`` (a mapping with the sla_timers columns).

    Values stay Python objects (UUIDs, datetimes): the repository serializes
    whole batches at once. Failed and retried events are numbered by
    ``timer["retries"]``."""
    if event_type in PER_RETRY:
        step = timer["retries"]
    payload = {
        "type": event_type,
        "timer_id": timer["id"],
        "lead_id": timer["lead_id"],
        "sla_contract_id": timer["sla_contract_id"],
        "started_at": timer["started_at"],
        "due_at": timer["due_at"],
        "correlation_id": timer["correlation_id"],
        "occurred_at": occurred_at,
        **extra,
    }
    return {
        "tenant_id": timer["tenant_id"],
        "timer_id": timer["id"],
        "event_type": event_type,
        "payload": payload,
        "correlation_id": timer["correlation_id"],
        "idempotency_key": event_key(timer["id"], event_type, step, repeat=repeat),
        "created_at": occurred_at,
    }
