"""Pause and resume routes: a PAUSED timer neither warns nor escalates, and on
resume its due_at and every pending warning and step move by the time paused
(business time where a calendar applies). Rules in models/pauses.py and
docs/pauses-warnings.md."""

from __future__ import annotations

import logging
from uuid import UUID

from flask import Blueprint, g
from pydantic import Field

from models import pauses
from models.db import tenant_scope
from tasks.delivery import wake_delivery
from tasks.wakeups import schedule_wakeups

from .operations import json_response, operation
from .problems import ApiProblem, not_found, problem_type
from .schemas import Problem, RequestModel, Timer
from .services import services
from .timers import NOT_FOUND, _timer_id, _with_escalations

log = logging.getLogger(__name__)

bp = Blueprint("pauses", __name__)

NOT_OPEN = ("The timer is closed (completed or cancelled): the problem names its status", Problem)


class PauseRequest(RequestModel):
    reason: str | None = Field(
        default=None, min_length=1, max_length=1000, description='e.g. "waiting on customer"'
    )


class ResumeRequest(RequestModel):
    pass


def _closed(exc: pauses.TimerClosed) -> ApiProblem:
    return ApiProblem(
        409,
        str(exc),
        type_=problem_type("conflict"),
        errors=[{"field": "status", "reason": f"is {exc.status}: only an open timer can"}],
    )


def _change(timer_id: UUID, change):
    tid = _timer_id(timer_id)
    with tenant_scope(services().engine, g.tenant_id) as conn:
        try:
            found = change(conn, tid)
        except pauses.TimerClosed as exc:
            raise _closed(exc) from None
        if found is None:
            raise not_found("timer")
        row, changed = found
        timer = _with_escalations(conn, [row])[0]
    if changed:
        # After the commit, so a wake-up never races ahead of its row; a lost
        # one only waits for the next sweep.
        if row.get("next_fire_at") is not None:
            try:
                schedule_wakeups([row["next_fire_at"]])
            except Exception:
                log.exception("scheduling the wake-up of timer %s failed", tid)
        wake_delivery()  # its sla.timer.paused or sla.timer.resumed event
    return json_response(timer)


@bp.post("/v1/timers/<uuid:timer_id>/pause")
@operation(
    "Pause a timer (e.g. while waiting on the customer)",
    limited=True,
    tag="timers",
    body=PauseRequest,
    body_required=False,
    responses={200: ("Paused (or already was)", Timer), 404: NOT_FOUND, 409: NOT_OPEN},
    description="While PAUSED the timer neither warns nor escalates. Idempotent: pausing "
    "a paused timer changes nothing and writes no second sla.timer.paused.",
)
def pause(timer_id: UUID, body: PauseRequest):
    return _change(
        timer_id, lambda conn, tid: pauses.pause_timer(conn, g.tenant_id, tid, body.reason)
    )


@bp.post("/v1/timers/<uuid:timer_id>/resume")
@operation(
    "Resume a paused timer",
    limited=True,
    tag="timers",
    body=ResumeRequest,
    body_required=False,
    responses={200: ("Resumed (or was not paused)", Timer), 404: NOT_FOUND, 409: NOT_OPEN},
    description="The timer returns to the status it was paused from; due_at and every "
    "pending warning and step move by the time paused (business time where a calendar "
    "applies), and paused_seconds adds the wall time. Idempotent: resuming a running "
    "timer changes nothing.",
)
def resume(timer_id: UUID, body: ResumeRequest):
    return _change(timer_id, lambda conn, tid: pauses.resume_timer(conn, g.tenant_id, tid))
