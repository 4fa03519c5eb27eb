"""Lead events, the database side of POST /v1/lead-events
(models/sql/lead_events.sql; the rules are models/lead_rules.py).

``record`` takes one event in the caller's transaction: it locks the event's
lead and contract and its id, answers a replay from the stored event, or
decides the event against the lead's history and starts, completes or
cancels the lead's timer through models/timers.py, then records the event and
its outcome in ``lead_events``. Every event is recorded, ignored ones too:
later-arriving older events are judged against them. One transaction per
event: it holds at most one timer's row lock, so it never waits in a cycle
with the firing path or another event.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from . import timers as timer_sql
from .errors import TimerConflict
from .lead_rules import START_TYPES, TERMINAL_TYPES, History, decide
from .sla import due_at
from .sql import Queries

SQL = Queries("lead_events.sql")


class EventIdReused(TimerConflict):
    """An event_id was already recorded with another event (409)."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event_id {event_id!r} was already recorded with a different event")


@dataclass(frozen=True)
class LeadEvent:
    """An event as validated by the API, with the fingerprint of its canonical form."""

    event_id: str
    event_type: str
    lead_id: str
    sla_contract_id: str
    # None: dated by the database's clock when it is decided.
    occurred_at: datetime | None
    fingerprint: str
    correlation_id: str
    # What a start type starts; ignored for the other types.
    window_seconds: int | None = None
    escalation_steps: tuple[dict[str, Any], ...] = ()
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class Recorded:
    """What an event did, or (``replayed``) did when it was first recorded."""

    event_id: str
    outcome: str
    reason: str | None
    timer_id: UUID | None
    replayed: bool
    # The timer this request started (for its wake-up), and whether it wrote outbox events.
    started: dict[str, Any] | None = None
    wrote_events: bool = False


def record(conn: Connection, tenant_id: UUID, event: LeadEvent) -> Recorded:
    """Take one event, in ``conn``'s transaction (scoped to the tenant).
    Raises EventIdReused when its id is stored with another fingerprint."""
    keys = {
        "tenant": tenant_id,
        "lead": event.lead_id,
        "contract": event.sla_contract_id,
        "event_id": event.event_id,
    }
    now = conn.execute(SQL.lock.text, keys).scalar_one()
    state = (
        conn.execute(
            SQL.state.text,
            {**keys, "starts": list(START_TYPES), "terminals": list(TERMINAL_TYPES)},
        )
        .mappings()
        .one()
    )
    if state["stored_outcome"] is not None:
        if state["stored_fingerprint"] != event.fingerprint:
            raise EventIdReused(event.event_id)
        return Recorded(
            event.event_id,
            state["stored_outcome"],
            state["stored_reason"],
            state["stored_timer_id"],
            replayed=True,
        )

    at = event.occurred_at or now
    terminal = state["terminal_at"]
    history = History(
        open_started_at=state["open_started_at"],
        latest_start=state["latest_start"],
        latest_terminal=None if terminal is None else (terminal, state["terminal_type"]),
    )
    decision = decide(event.event_type, at, history)
    started, timer_id = None, None
    if decision.action == "start":
        started = _start(conn, tenant_id, event, at)
        timer_id = started["id"]
    elif decision.action in ("complete", "cancel"):
        timer_id = state["open_id"]
        reason = event.event_type if decision.action == "cancel" else None
        timer_sql.close_timers(conn, [{"id": timer_id}], decision.action, reason=reason, at=at)
    conn.execute(
        SQL.insert_event.text,
        {
            **keys,
            "event_type": event.event_type,
            "occurred_at": at,
            "fingerprint": event.fingerprint,
            "outcome": decision.outcome,
            "reason": decision.reason,
            "timer_id": timer_id,
        },
    )
    return Recorded(
        event.event_id,
        decision.outcome,
        decision.reason,
        timer_id,
        replayed=False,
        started=started,
        wrote_events=timer_id is not None,
    )


def _start(conn: Connection, tenant_id: UUID, event: LeadEvent, at: datetime) -> dict[str, Any]:
    # The SLA runs from when the event occurred: a late qualification gets no extra time.
    if event.window_seconds is None:
        raise ValueError("a start needs a window")
    new = timer_sql.NewTimer(
        lead_id=event.lead_id,
        sla_contract_id=event.sla_contract_id,
        started_at=at,
        window_seconds=event.window_seconds,
        escalation_steps=list(event.escalation_steps),
        correlation_id=event.correlation_id,
        metadata=event.metadata or {},
    )
    # The rules start only after every timer's start of the lead and contract,
    # under the lock every start takes: no replay, conflict or duplicate here.
    row, _ = timer_sql.start_timer(conn, tenant_id, new, due_at(at, event.window_seconds))
    return row
