"""A timer's timeline: the ordered audit of everything that happened to it
(models/sql/reports.sql ``timeline``).

Entries come from three sources, each the record of its own guarantee: the
outbox events (started, due, paused, resumed, completed, cancelled or
superseded, failed, retried), the step rows (each step and repeat with its
outcome, SKIPPED ones included) and the warning rows (each threshold, SENT or
SKIPPED). Each entry is ``{"kind", "at", "correlation_id", "details"}``, in
order of ``at``, then of what happens first at one instant (a close before the
steps and warnings it skips).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from .sql import Queries

SQL = Queries("reports.sql")

# Every kind of entry, in the order entries at one instant are listed.
KINDS = (
    "started",
    "resumed",
    "warning",
    "due",
    "step",
    "failed",
    "retried",
    "paused",
    "completed",
    "cancelled",
    "superseded",
)


def timeline(conn: Connection, tenant_id: UUID, timer_id: UUID) -> list[dict[str, Any]] | None:
    """The timer's entries, oldest first; None if the tenant has no such timer."""
    params = {"tenant": tenant_id, "id": timer_id}
    if conn.execute(SQL.timeline_timer.text, params).first() is None:
        return None
    return [dict(r._mapping) for r in conn.execute(SQL.timeline.text, params)]
