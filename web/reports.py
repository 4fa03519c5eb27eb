"""Report routes: a timer's timeline (GET /v1/timers/{id}/timeline) and the
tenant's compliance stats (GET /v1/stats). Both read only the authenticated
tenant's rows; another tenant's timer answers 404 exactly like a missing one.

Their request and response models live here, beside the routes that are their
only users (the OpenAPI document takes them from the routes' declarations).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from flask import Blueprint, Response, g
from pydantic import ConfigDict, Field, TypeAdapter

from models import stats as stats_sql
from models import timeline as timeline_sql
from models.db import tenant_scope

from .operations import json_response, operation
from .problems import not_found
from .schemas import (
    Id,
    Problem,
    RequestModel,
    ResponseModel,
    Rfc3339,
    UtcDatetime,
    constraints,
)
from .services import services

bp = Blueprint("reports", __name__)

# --------------------------------------------------------------------------- timeline

TimelineKind = Literal[timeline_sql.KINDS]  # type: ignore[valid-type]


class TimelineEntry(ResponseModel):
    kind: TimelineKind = Field(
        description="started, resumed, warning (SENT or SKIPPED), due, step (each step and "
        "repeat with its outcome), failed, retried, paused, completed, cancelled, or "
        "superseded (cancelled because a new timer started for the lead and contract)."
    )
    at: UtcDatetime = Field(description="When it was recorded.")
    correlation_id: str
    details: dict[str, Any] = Field(
        description="What the entry's record says: the event's payload (started_at, "
        "due_at, reason, breached...), a step's step, repeat, outcome, action, target and "
        "error, a warning's threshold, outcome and scheduled_at; started names the timer it "
        "supersedes and superseded the timer that replaced it (or null)."
    )


class Timeline(ResponseModel):
    timer_id: UUID
    items: list[TimelineEntry]


@bp.get("/v1/timers/<uuid:timer_id>/timeline")
@operation(
    "A timer's audit timeline, oldest first",
    tag="reports",
    responses={
        200: ("The timer's entries", Timeline),
        404: ("No such timer for this tenant", Problem),
    },
    description=(
        "Entries are ordered by time, then by what happens first at one instant: a close "
        "comes before the steps and warnings it records as SKIPPED."
    ),
)
def timeline(timer_id: UUID):
    with tenant_scope(services().engine, g.tenant_id) as conn:
        rows = timeline_sql.timeline(conn, g.tenant_id, timer_id)
    if rows is None:
        raise not_found("timer")
    return json_response(Timeline(timer_id=timer_id, items=rows))


# --------------------------------------------------------------------------- stats

FROM_NOT_AFTER_TO = {
    "rule": "ordered-date-times",
    "fields": ["from", "to"],
    "description": "from is not later than to.",
}
_INSTANT: TypeAdapter[datetime] = TypeAdapter(Rfc3339)


class StatsQuery(RequestModel):
    """The range of start times, [from, to), and optionally one contract."""

    model_config = ConfigDict(
        strict=False, populate_by_name=True, json_schema_extra=constraints(FROM_NOT_AFTER_TO)
    )

    from_: Rfc3339 = Field(
        alias="from",
        description="RFC 3339 with an offset: timers started at or after this instant count.",
    )
    to: Rfc3339 = Field(
        description="RFC 3339 with an offset: timers started before this instant count; "
        "not earlier than from (x-constraints)."
    )
    sla_contract_id: Id | None = Field(default=None, description="Only this contract's timers.")

    @staticmethod
    def cross_field_errors(data: dict[str, Any]) -> list[dict[str, str]]:
        try:
            start, end = (_INSTANT.validate_python(data[k]) for k in ("from", "to"))
        except Exception:  # missing or malformed: the field errors say it
            return []
        if start > end:
            return [{"field": "from", "reason": "must not be later than to"}]
        return []


class Overdue(ResponseModel):
    count: int = Field(
        description="Open timers whose next_fire_at has come: a warning, the due time, a "
        "step or a retry that the firing path has not recorded yet."
    )
    oldest_fire_at: UtcDatetime | None = Field(description="The earliest such next_fire_at.")
    oldest_age_seconds: float | None = Field(description="as_of minus oldest_fire_at.")


class TimeToComplete(ResponseModel):
    completed: int = Field(description="How many completed timers the percentiles are over.")
    p50: int | None = Field(
        description="Seconds within which half of them completed (completed_at - "
        "started_at, wall clock, pauses included), nearest rank: exact to 100 s, then on a "
        "grid of two significant digits (within 10%). null: none completed."
    )
    p90: int | None = Field(description="The same for nine in ten.")


class StepOutcomes(ResponseModel):
    step: int
    success: int
    failed: int
    skipped: int


class ThresholdOutcomes(ResponseModel):
    threshold: int
    sent: int
    skipped: int


class Warnings(ResponseModel):
    sent: int
    skipped: int
    by_threshold: list[ThresholdOutcomes]


class Stats(ResponseModel):
    from_: UtcDatetime = Field(alias="from", serialization_alias="from")
    to: UtcDatetime
    sla_contract_id: str | None
    as_of: UtcDatetime = Field(description="The instant open timers are judged at.")
    started: int = Field(description="Timers started in [from, to).")
    completed_within_sla: int = Field(description="COMPLETED at or before due_at.")
    completed_late: int = Field(description="COMPLETED after due_at.")
    open_breached: int = Field(
        description="Open and past due at as_of; a paused timer when it was past due when "
        "paused (its due time moves on resume)."
    )
    breached: int = Field(description="completed_late + open_breached.")
    compliance_percent: float | None = Field(
        description="completed_within_sla / (completed_within_sla + breached) * 100, to two "
        "decimals; null when no timer is decided yet. Cancelled timers, and open ones not "
        "yet due, are not decided."
    )
    cancelled: int = Field(description="CANCELLED, superseded ones included.")
    superseded: int = Field(description="Cancelled because a new timer started for the lead.")
    active: int = Field(description="Open and not paused: ACTIVE, DUE or ESCALATED.")
    paused: int
    overdue: Overdue
    time_to_complete_seconds: TimeToComplete
    escalations: list[StepOutcomes] = Field(
        description="Step rows by step: each run and repeat, and the steps a close skipped."
    )
    warnings: Warnings


@bp.get("/v1/stats")
@operation(
    "Compliance stats of the tenant's timers started in a range",
    tag="reports",
    query=StatsQuery,
    responses={200: ("The figures", Stats)},
    description=(
        "Counts the timers started in [from, to), of one contract if sla_contract_id is "
        "given: how many started, completed within their SLA or late, are open past due, "
        "were cancelled, are running or paused, the overdue backlog, time-to-complete "
        "percentiles, step outcomes by step and warnings by threshold. Closed timers are "
        "counted from a rollup the worker keeps (docs/reports.md); open ones as of now."
    ),
)
def get_stats(query: StatsQuery):
    # One snapshot for the fold positions and the rollup they describe.
    engine = services().engine.execution_options(isolation_level="REPEATABLE READ")
    with tenant_scope(engine, g.tenant_id) as conn:
        figures = stats_sql.stats(conn, g.tenant_id, query.from_, query.to, query.sla_contract_id)
    body = Stats(
        **figures, to=query.to, sla_contract_id=query.sla_contract_id, **{"from": query.from_}
    )
    return Response(body.model_dump_json(by_alias=True), mimetype="application/json")
