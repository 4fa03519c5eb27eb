"""Lead events, the database side of POST /v1/lead-events
(models/sql/lead_events.sql; the rules are models/lead_rules.py).

``record`` takes one event in the caller's transaction: it locks the event's
lead and contract and its id, answers a replay from the stored event, or
decides the event against the lead's history and starts, completes or
cancels the lead's timer through models/timers.py (a start under its
contract's current version, models/contracts.py), or pauses or resumes it
when the timer's contract snapshot names the type (models/pauses.py), then
records the event and its outcome in ``lead_events``. Every event is recorded, ignored ones too:
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

from . import contracts, pauses
from . import timers as timer_sql
from .errors import TimerConflict
from .lead_rules import (
    HOLD_TYPES,
    START_TYPES,
    TERMINAL_TYPES,
    Decision,
    History,
    decide,
    decide_hold,
)
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
    # What a start type starts, over its contract's (None or empty: the
    # contract's, else the default ladder); ignored for the other types.
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
    # The timer this request started, and whether it wrote outbox events.
    started: dict[str, Any] | None = None
    wrote_events: bool = False
    # When the timer it started or resumed next fires: its wake-up after the commit.
    wake_at: datetime | None = None


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
    policy = None
    if event.event_type in START_TYPES:
        # Resolved whatever the rules decide: a start under an unknown or
        # retired contract is bad input (Unresolvable), not an ignored event.
        policy = _policy(conn, tenant_id, event)
    if event.event_type in HOLD_TYPES:
        decision, open_timer = _hold(conn, tenant_id, event, at, state["open_id"])
    else:
        terminal = state["terminal_at"]
        history = History(
            open_started_at=state["open_started_at"],
            latest_start=state["latest_start"],
            latest_terminal=None if terminal is None else (terminal, state["terminal_type"]),
        )
        decision = decide(event.event_type, at, history)
    started, timer_id, wake_at = None, None, None
    if decision.action == "start":
        assert policy is not None
        started = _start(conn, tenant_id, event, at, policy)
        timer_id, wake_at = started["id"], started["next_fire_at"]
    elif decision.action in ("complete", "cancel"):
        timer_id = state["open_id"]
        reason = event.event_type if decision.action == "cancel" else None
        timer_sql.close_timers(conn, [{"id": timer_id}], decision.action, reason=reason, at=at)
    elif decision.action == "pause":
        timer_id = open_timer["id"]
        pauses.pause_timers(conn, [open_timer], reason=event.event_type)
    elif decision.action == "resume":
        timer_id = open_timer["id"]
        (resumed,) = pauses.resume_timers(conn, [open_timer])
        wake_at = resumed["next_fire_at"]
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
        wake_at=wake_at,
    )


def _policy(conn: Connection, tenant_id: UUID, event: LeadEvent) -> contracts.Policy:
    """The start's contract resolved (one round trip); raises contracts.Unresolvable."""
    found = contracts.lookup(conn, tenant_id, [event.sla_contract_id], [])
    return contracts.resolve(
        found,
        event.sla_contract_id,
        window_seconds=event.window_seconds,
        escalation_steps=list(event.escalation_steps) or None,
        warning_thresholds=None,
        calendar_id=None,
    )


def _hold(
    conn: Connection, tenant_id: UUID, event: LeadEvent, at: datetime, open_id: UUID | None
) -> tuple[Decision, dict[str, Any] | None]:
    """A hold type's decision, judged by the open timer's own contract snapshot."""
    timer = None if open_id is None else timer_sql.lock_timer(conn, tenant_id, open_id)
    snapshot = (timer or {}).get("contract_snapshot") or {}
    decision = decide_hold(
        event.event_type,
        at,
        open_started_at=None if timer is None else timer["started_at"],
        paused=timer is not None and timer["status"] == "PAUSED",
        pause_on=snapshot.get("pause_on") or (),
        resume_on=snapshot.get("resume_on") or (),
    )
    return decision, timer


def _start(
    conn: Connection, tenant_id: UUID, event: LeadEvent, at: datetime, policy: contracts.Policy
) -> dict[str, Any]:
    # The SLA runs from when the event occurred: a late qualification gets no
    # extra time (business time, under a calendar).
    new = timer_sql.NewTimer(
        lead_id=event.lead_id,
        sla_contract_id=event.sla_contract_id,
        started_at=at,
        window_seconds=policy.window_seconds,
        escalation_steps=policy.escalation_steps,
        correlation_id=event.correlation_id,
        metadata=event.metadata or {},
        calendar=policy.calendar,
        warning_thresholds=policy.warning_thresholds,
        contract_version=policy.contract_version,
        contract_snapshot=policy.snapshot,
        next_fire_at=policy.first_fire_at(at),
    )
    # The rules start only after every timer's start of the lead and contract,
    # under the lock every start takes: no replay, conflict or duplicate here.
    row, _ = timer_sql.start_timer(conn, tenant_id, new, policy.due_at(at))
    return row
