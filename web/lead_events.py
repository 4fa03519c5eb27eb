"""Lead-event routes: a service's own lead events drive its leads' timers
(docs/lead-events.md). The rules are models/lead_rules.py, the database side
models/lead_events.py; this module validates, runs one transaction per event
and, after each commit, wakes delivery and schedules the started timers'
wake-ups."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable

import orjson
from flask import Blueprint, g

from models import contracts
from models import lead_events as lead_sql
from models.db import tenant_scope
from models.lead_rules import START_TYPES as LEAD_START_TYPES
from models.tenants import enter_tenant
from tasks.wakeups import schedule_wakeups

from .logs import request_correlation
from .operations import json_response, operation
from .parsing import header
from .problems import validation_error
from .schemas import (
    LeadEventBulkCreate,
    LeadEventBulkItem,
    LeadEventCreate,
    LeadEventResult,
    LeadEventResults,
    Problem,
    ladder_json,
)
from .services import services

log = logging.getLogger(__name__)

bp = Blueprint("lead_events", __name__)


def _event(body: LeadEventCreate, correlation_header: str | None) -> lead_sql.LeadEvent:
    canonical = body.canonical()
    fingerprint = hashlib.sha256(orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return lead_sql.LeadEvent(
        event_id=body.event_id,
        event_type=body.type,
        lead_id=body.lead_id,
        sla_contract_id=body.sla_contract_id,
        occurred_at=body.occurred_at,
        fingerprint=fingerprint,
        correlation_id=body.correlation_id or correlation_header or request_correlation(),
        window_seconds=body.window,
        escalation_steps=tuple(ladder_json(body.escalation_steps)) if body.steps_given else (),
        metadata=body.data,
    )


def _unresolvable(errors: list[tuple[str, contracts.Unresolvable]]):
    return validation_error(
        [{"field": f"{prefix}{e.field}", "reason": e.reason} for prefix, e in errors]
    )


def _record(conn, event: lead_sql.LeadEvent, prefix: str = "") -> lead_sql.Recorded:
    try:
        return lead_sql.record(conn, g.tenant_id, event)
    except contracts.Unresolvable as exc:
        raise _unresolvable([(prefix, exc)]) from None


def _check_contracts(events: list[lead_sql.LeadEvent]) -> None:
    """Every start's contract resolves, before any event is taken: one round
    trip for the request, each contract once."""
    starts = [(i, e) for i, e in enumerate(events) if e.event_type in LEAD_START_TYPES]
    if not starts:
        return
    with tenant_scope(services().engine, g.tenant_id) as conn:
        found = contracts.lookup(conn, g.tenant_id, [e.sla_contract_id for _, e in starts], [])
    errors = []
    for i, e in starts:
        try:
            contracts.resolve(
                found,
                e.sla_contract_id,
                window_seconds=e.window_seconds,
                escalation_steps=list(e.escalation_steps) or None,
                warning_thresholds=None,
                calendar_id=None,
            )
        except contracts.Unresolvable as exc:
            errors.append((f"events.{i}.", exc))
    if errors:
        raise _unresolvable(errors)


def _after_commit(recorded: Iterable[lead_sql.Recorded]) -> None:
    # After the commit, so neither a delivery nor a wake-up races ahead of its
    # rows. Both are best effort: the sweeps find what they miss.
    recorded = list(recorded)
    if any(r.wrote_events for r in recorded):
        from tasks.delivery import wake_delivery

        wake_delivery()
    # At what each started or resumed timer waits for first (a warning may come before due).
    due = [r.wake_at for r in recorded if r.wake_at is not None]
    if due:
        try:
            schedule_wakeups(due)
        except Exception:
            log.exception("scheduling wake-ups for %d timer(s) failed", len(due))


def _status(recorded: lead_sql.Recorded) -> int:
    return 201 if recorded.outcome == "started" and not recorded.replayed else 200


@bp.post("/v1/lead-events")
@operation(
    "Take a lead event: start, complete or cancel the lead's timer",
    limited=True,
    tag="lead-events",
    body=LeadEventCreate,
    headers=("X-Correlation-ID",),
    responses={
        201: ("The event started a timer (Location names it)", LeadEventResult),
        200: (
            "Any other outcome, or a replay of a recorded event (Idempotent-Replayed: true) "
            "with its first outcome",
            LeadEventResult,
        ),
        409: ("The event_id is recorded with a different event", Problem),
    },
    description=(
        "Events are judged by occurred_at, not arrival: an event older than the lead's "
        "history for the contract says is recorded and ignored, with a reason "
        "(docs/lead-events.md). Every event is recorded, once per event_id."
    ),
)
def ingest(body: LeadEventCreate):
    event = _event(body, header("X-Correlation-ID"))
    with tenant_scope(services().engine, g.tenant_id) as conn:
        recorded = _record(conn, event)
    _after_commit([recorded])
    headers = {}
    if recorded.replayed:
        headers["Idempotent-Replayed"] = "true"
    if recorded.outcome == "started":
        headers["Location"] = f"/v1/timers/{recorded.timer_id}"
    result = LeadEventResult(
        event_id=recorded.event_id,
        outcome=recorded.outcome,
        timer_id=recorded.timer_id,
        reason=recorded.reason,
    )
    return json_response(result, _status(recorded), headers)


@bp.post("/v1/lead-events/bulk")
@operation(
    "Take up to 1000 lead events, in order",
    limited=True,
    tag="lead-events",
    body=LeadEventBulkCreate,
    headers=("X-Correlation-ID",),
    responses={200: ("One result per event, in request order", LeadEventResults)},
    description=(
        "The request is validated as a whole first (errors name the item, e.g. "
        '"events.3.type"; nothing is taken). Then each event is taken in order, in a '
        "transaction of its own, exactly as POST /v1/lead-events takes it: its result "
        "says what that route would have answered (status 201, 200 or 409). An "
        "event_id given twice is, the second time, a replay of the first. Should the "
        "database fail midway, the answer is a 503 and the events before stay taken: "
        "sending the request again replays them."
    ),
)
def ingest_bulk(body: LeadEventBulkCreate):
    correlation = header("X-Correlation-ID")
    events = [_event(item, correlation) for item in body.events]
    _check_contracts(events)
    done: list[lead_sql.Recorded] = []
    results: list[LeadEventBulkItem] = []
    try:
        with services().engine.connect() as conn:
            for i, event in enumerate(events):
                try:
                    with conn.begin():
                        enter_tenant(conn, g.tenant_id)
                        recorded = _record(conn, event, f"events.{i}.")
                except lead_sql.EventIdReused as exc:
                    results.append(
                        LeadEventBulkItem(
                            event_id=event.event_id,
                            status=409,
                            replayed=False,
                            outcome=None,
                            timer_id=None,
                            reason=str(exc),
                        )
                    )
                    continue
                done.append(recorded)
                results.append(
                    LeadEventBulkItem(
                        event_id=recorded.event_id,
                        status=_status(recorded),
                        replayed=recorded.replayed,
                        outcome=recorded.outcome,
                        timer_id=recorded.timer_id,
                        reason=recorded.reason,
                    )
                )
    finally:
        _after_commit(done)  # what committed before a failure still gets its wake-ups
    return json_response(LeadEventResults(results=results))
