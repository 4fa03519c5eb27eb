"""Timers made straight through the repository, for tests of the firing path."""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import uuid4

from models import timers as timer_sql
from models.sla import DEFAULT_LADDER, due_at, utcnow


def start_timer(
    engine,
    tenant_id,
    *,
    lead_id: str | None = None,
    window_seconds: int = 60,
    started_at: datetime | None = None,
    steps=DEFAULT_LADDER,
    contract: str = "default",
    idempotency_key: str | None = None,
) -> dict:
    started = started_at or utcnow()
    new = timer_sql.NewTimer(
        lead_id=lead_id or f"lead-{uuid4()}",
        sla_contract_id=contract,
        started_at=started,
        window_seconds=window_seconds,
        escalation_steps=[dict(s) for s in steps],
        correlation_id=f"corr-{uuid4()}",
        metadata={},
        idempotency_key=idempotency_key,
    )
    with engine.begin() as conn:
        timer, _ = timer_sql.start_timer(
            conn, tenant_id, new, due_at(started, window_seconds), utcnow()
        )
    return timer


def overdue(seconds: int = 5) -> datetime:
    """A start time that makes a 60 s timer due ``seconds`` ago."""
    return utcnow() - timedelta(seconds=60 + seconds)
