"""Timers with warnings, calendars and repeating ladders, for the tests of the
firing path: started through the repository like tests/support/factories.py,
then given their policy columns as the start path stores them (due_at and
next_fire_at from models/sla.py), so these tests do not depend on how a
contract resolves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text

from models.calendars import Calendar
from models.outbox import to_json
from models.sla import DEFAULT_LADDER, Schedule, first_fire_at

from .factories import start_timer

BERLIN_OFFICE = {
    "timezone": "Europe/Berlin",
    "weekly_hours": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
}


def start_scheduled(
    engine,
    tenant_id,
    *,
    window_seconds: int = 60,
    started_at: datetime | None = None,
    thresholds: Sequence[int] = (),
    steps: Sequence[Mapping[str, Any]] = DEFAULT_LADDER,
    calendar: Mapping[str, Any] | None = None,
    lead_id: str | None = None,
) -> dict[str, Any]:
    timer = start_timer(
        engine,
        tenant_id,
        lead_id=lead_id,
        window_seconds=window_seconds,
        started_at=started_at,
        steps=steps,
    )
    schedule = Schedule(
        started_at=timer["started_at"],
        window_seconds=window_seconds,
        calendar=None if calendar is None else Calendar.from_json(calendar),
    )
    with engine.begin() as conn:
        return dict(
            conn.execute(
                text(
                    "UPDATE sla_timers SET warning_thresholds = :thresholds, "
                    "calendar = CAST(:calendar AS jsonb), due_at = :due, next_fire_at = :first "
                    "WHERE id = :id RETURNING *"
                ),
                {
                    "id": timer["id"],
                    "thresholds": list(thresholds),
                    "calendar": None if calendar is None else to_json(calendar),
                    "due": schedule.due,
                    "first": first_fire_at(schedule, thresholds),
                },
            )
            .mappings()
            .one()
        )


def row(engine, timer_id) -> dict[str, Any]:
    with engine.connect() as conn:
        return dict(
            conn.execute(text("SELECT * FROM sla_timers WHERE id = :id"), {"id": timer_id})
            .mappings()
            .one()
        )


def warnings_of(engine, timer_id) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT threshold, outcome FROM sla_timer_warnings WHERE timer_id = :id "
                    "ORDER BY threshold"
                ),
                {"id": timer_id},
            )
        ]


def runs_of(engine, timer_id) -> list[tuple[int, int, str]]:
    """(step, repeat, outcome) rows in the order they were recorded."""
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                text(
                    "SELECT escalation_step, repeat, outcome FROM sla_escalation_events "
                    "WHERE timer_id = :id ORDER BY id"
                ),
                {"id": timer_id},
            )
        ]


def events_of(engine, timer_id, event_type: str | None = None) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                text(
                    "SELECT event_type, payload, idempotency_key FROM outbox_events "
                    "WHERE timer_id = :id AND (CAST(:type AS text) IS NULL OR event_type = :type) "
                    "ORDER BY id"
                ),
                {"id": timer_id, "type": event_type},
            ).mappings()
        ]
