"""Timer and lead routes. Every query is scoped by the authenticated tenant, and
another tenant's timer answers 404 exactly like a missing one."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import datetime
from typing import Any
from uuid import UUID

from flask import Blueprint, g

from models import contracts, timer_reads
from models import firing as firing_sql
from models import timers as timer_sql
from models.db import tenant_scope
from models.sla import due_at
from tasks.wakeups import schedule_wakeups

from .cursors import decode_cursor, encode_cursor
from .limits import PATH_PARAMS
from .logs import request_correlation
from .operations import json_response, operation
from .parsing import header, text_problems
from .problems import not_found, validation_error
from .schemas import (
    CancelRequest,
    CompleteRequest,
    ContractQuery,
    LeadCancelRequest,
    LeadCompleteRequest,
    Problem,
    Timer,
    TimerBatch,
    TimerBulkCreate,
    TimerCreate,
    TimerItems,
    TimerListQuery,
    TimerPage,
    ladder_json,
)
from .services import services
from .wakes import wake_delivery

log = logging.getLogger(__name__)

bp = Blueprint("timers", __name__)

NOT_FOUND = ("No such timer for this tenant", Problem)
CONFLICT = ("Conflicts with the timer's state", Problem)


def _engine():
    return services().engine


def _tenant():
    """A transaction that sees only the authenticated tenant's rows."""
    return tenant_scope(_engine(), g.tenant_id)


def _timer_id(raw: UUID | str) -> UUID:
    # Routes take <uuid:timer_id>: a malformed id matches no route and is a
    # 404 problem, like any unknown id, and /v1/timers/bulk is never read as
    # an id (GET answers 405, and OPTIONS names only POST).
    if isinstance(raw, UUID):
        return raw
    try:
        return UUID(raw)
    except ValueError:
        raise not_found("timer") from None


def _with_escalations(conn, rows: list[dict[str, Any]]) -> list[Timer]:
    steps = timer_reads.escalations_for(conn, g.tenant_id, [r["id"] for r in rows])
    # Only timers with thresholds can have warnings: plain ones cost no query.
    warned = [r["id"] for r in rows if r.get("warning_thresholds")]
    warnings = firing_sql.warnings_for(conn, g.tenant_id, warned)
    return [Timer.from_row(r, steps[r["id"]], warnings.get(r["id"])) for r in rows]


def _fingerprint(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _plain_timer(
    body: TimerCreate,
    correlation_header: str | None,
    key: str | None,
    fingerprint: str | None,
) -> tuple[timer_sql.NewTimer, datetime | None]:
    """A start as it was before contracts, for the fast path: its own window
    and ladder, unresolved (the insert skips it if a contract of its name exists)."""
    # Without started_at, the database's clock dates the start (and so its
    # due_at): this host's clock may be skewed, and one running behind would
    # make timers fire early.
    started, window = body.started_at, body.window
    assert window is not None
    new = timer_sql.NewTimer(
        lead_id=body.lead_id,
        sla_contract_id=body.sla_contract_id,
        started_at=started,
        window_seconds=window,
        escalation_steps=ladder_json(body.escalation_steps),
        correlation_id=body.correlation_id or correlation_header or request_correlation(),
        metadata=body.metadata,
        idempotency_key=key,
        request_fingerprint=fingerprint,
        unresolved=True,
    )
    return new, None if started is None else due_at(started, window)


def _fast(body: TimerCreate) -> bool:
    """Whether a start can be inserted before anything is looked up."""
    return (
        body.window is not None
        and body.warning_thresholds is None
        and not contracts.needs_lookup(body.sla_contract_id, body.calendar_id)
    )


def _lookup(conn, items: list[TimerCreate]) -> contracts.Lookup:
    return contracts.lookup(
        conn,
        g.tenant_id,
        [b.sla_contract_id for b in items],
        [b.calendar_id for b in items if b.calendar_id is not None],
    )


def _resolved_timer(
    body: TimerCreate,
    found: contracts.Lookup,
    correlation_header: str | None,
    key: str | None,
    fingerprint: str | None,
) -> tuple[timer_sql.NewTimer, datetime | None]:
    """The start under its contract's current version, the request's fields
    winning. Raises contracts.Unresolvable."""
    policy = contracts.resolve(
        found,
        body.sla_contract_id,
        window_seconds=body.window,
        escalation_steps=ladder_json(body.escalation_steps) if body.steps_given else None,
        warning_thresholds=body.warning_thresholds,
        calendar_id=body.calendar_id,
    )
    started, due, fire = body.started_at, None, None
    if not policy.plain:
        # Business time and warnings are counted here, from the database's
        # clock when the request gives no start (the lookup read it).
        started = started or found.now
    if started is not None:
        due, fire = policy.due_at(started), policy.first_fire_at(started)
    new = timer_sql.NewTimer(
        lead_id=body.lead_id,
        sla_contract_id=body.sla_contract_id,
        started_at=started,
        window_seconds=policy.window_seconds,
        escalation_steps=policy.escalation_steps,
        correlation_id=body.correlation_id or correlation_header or request_correlation(),
        metadata=body.metadata,
        idempotency_key=key,
        request_fingerprint=fingerprint,
        calendar=policy.calendar,
        warning_thresholds=policy.warning_thresholds,
        contract_version=policy.contract_version,
        contract_snapshot=policy.snapshot,
        next_fire_at=fire,
    )
    return new, due


def _replay(conn, keys: list[str | None], fingerprint: str | None) -> list[dict] | None:
    """A retry of a request that started timers before its contract was retired
    (or its calendar deleted) is still a replay: the stored timers, else None."""
    if fingerprint is None or None in keys:
        return None
    stored = timer_sql.stored_by_key(conn, g.tenant_id, keys)  # type: ignore[arg-type]
    rows = [stored.get(k) for k in keys]  # type: ignore[arg-type]
    if all(r is not None and r["request_fingerprint"] == fingerprint for r in rows):
        return rows  # type: ignore[return-value]
    return None


def _unresolvable(errors: list[tuple[str, contracts.Unresolvable]]):
    return validation_error(
        [{"field": f"{prefix}{e.field}", "reason": e.reason} for prefix, e in errors]
    )


def _created(conn, rows: list[dict[str, Any]], created: bool) -> list[Timer]:
    # A timer created by this very transaction has no escalation rows yet.
    if created:
        return [Timer.from_row(r, []) for r in rows]
    return _with_escalations(conn, rows)


def _wake_up(rows: list[dict[str, Any]]) -> None:
    # After the commit, so a wake-up never races ahead of its row; at what the
    # timer waits for first (a warning may come before due). A lost wake-up
    # only delays firing until the next sweep, so never fail here.
    try:
        schedule_wakeups([r["next_fire_at"] for r in rows if r["next_fire_at"] is not None])
    except Exception:
        log.exception("scheduling wake-ups for %d timer(s) failed", len(rows))
    wake_delivery()  # their sla.timer.started events (never raises)


@bp.post("/v1/timers")
@operation(
    "Start a timer",
    limited=True,
    tag="timers",
    body=TimerCreate,
    headers=("Idempotency-Key", "X-Correlation-ID"),
    responses={
        201: ("Started", Timer),
        200: ("Replay of an earlier request with the same Idempotency-Key", Timer),
        409: ("Idempotency-Key reused with another body, or a duplicate start", Problem),
    },
    description=(
        "Starting a timer for a lead and contract that already has an open one "
        'cancels the old one (cancel_reason "superseded").'
    ),
)
def start(body: TimerCreate):
    key = header("Idempotency-Key")
    # Checked even when the body's correlation_id wins: a bad header is still bad input.
    correlation = header("X-Correlation-ID")
    fingerprint = _fingerprint(g.raw_body) if key is not None else None
    row = None
    if _fast(body):
        # Most starts are one statement, alone or with the tenant's starts that
        # arrive meanwhile; the rest (a contract, supersede, replay, conflicts)
        # take the transactional path.
        new, due = _plain_timer(body, correlation, key, fingerprint)
        engine, tenant = _engine(), g.tenant_id
        row = services().start_groups.start(
            tenant, new, due, lambda starts: timer_sql.try_start_timers(engine, tenant, starts)
        )
    if row is not None:
        created, timer = True, Timer.from_row(row, [])
    else:
        with _tenant() as conn:
            found = _lookup(conn, [body])
            try:
                new, due = _resolved_timer(body, found, correlation, key, fingerprint)
            except contracts.Unresolvable as exc:
                replayed = _replay(conn, [key], fingerprint)
                if replayed is None:
                    raise _unresolvable([("", exc)]) from None
                row, created = replayed[0], False
            else:
                row, created = timer_sql.start_timer(conn, g.tenant_id, new, due)
            timer = _created(conn, [row], created)[0]
    if created:
        _wake_up([row])
    headers = {"Location": f"/v1/timers/{timer.id}"}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return json_response(timer, 201 if created else 200, headers)


@bp.post("/v1/timers/bulk")
@operation(
    "Start up to 1000 timers in one request",
    limited=True,
    tag="timers",
    body=TimerBulkCreate,
    headers=("Idempotency-Key", "X-Correlation-ID"),
    responses={
        201: ("All started, in the order of the request", TimerBatch),
        200: ("Replay of an earlier request with the same Idempotency-Key", TimerBatch),
        409: ("Idempotency-Key reused with another body, or a duplicate start", Problem),
    },
    description=(
        "All or nothing: the request is validated as a whole (errors name the item, "
        'e.g. "timers.3.window_seconds") and its timers start in one transaction. '
        "Each item is what POST /v1/timers takes, with the same supersede rule; a "
        "lead_id and sla_contract_id pair may appear once per request. With an "
        'Idempotency-Key K, item i is stored under the key "K:i" (keys share one '
        "namespace per tenant with single starts)."
    ),
)
def start_bulk(body: TimerBulkCreate):
    key = header("Idempotency-Key")
    correlation = header("X-Correlation-ID")
    fingerprint = _fingerprint(g.raw_body) if key is not None else None
    with _tenant() as conn:
        # Each distinct contract and calendar once, in one round trip.
        found = _lookup(conn, body.timers)
        starts, errors = [], []
        for i, item in enumerate(body.timers):
            item_key = None if key is None else f"{key}:{i}"
            try:
                starts.append(_resolved_timer(item, found, correlation, item_key, fingerprint))
            except contracts.Unresolvable as exc:
                errors.append((f"timers.{i}.", exc))
        if errors:
            keys = [None if key is None else f"{key}:{i}" for i in range(len(body.timers))]
            replayed = _replay(conn, keys, fingerprint)
            if replayed is None:
                raise _unresolvable(errors)
            rows, created = replayed, False
        else:
            rows, created = timer_sql.start_timers(conn, g.tenant_id, starts)
        timers = _created(conn, rows, created)
    if created:
        _wake_up(rows)
    headers = {} if created else {"Idempotent-Replayed": "true"}
    return json_response(TimerBatch(items=timers), 201 if created else 200, headers)


@bp.get("/v1/timers")
@operation(
    "List timers, newest first",
    tag="timers",
    query=TimerListQuery,
    responses={200: ("A page of timers", TimerPage)},
)
def list_timers(query: TimerListQuery):
    after = None
    if query.cursor is not None:
        try:
            after = decode_cursor(query.cursor)
        except (ValueError, TypeError):
            raise validation_error(
                [{"field": "cursor", "reason": "is not a cursor returned by this API"}]
            ) from None
    with _tenant() as conn:
        rows, more = timer_reads.list_timers(
            conn,
            g.tenant_id,
            lead_id=query.lead_id,
            status=query.status,
            processing_status=query.processing_status,
            limit=query.limit,
            after=after,
        )
        items = _with_escalations(conn, rows)
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    return json_response(TimerPage(items=items, next_cursor=next_cursor))


@bp.get("/v1/timers/<uuid:timer_id>")
@operation(
    "Get a timer and its recorded escalation steps",
    tag="timers",
    responses={200: ("The timer", Timer), 404: NOT_FOUND},
)
def get(timer_id: UUID):
    tid = _timer_id(timer_id)
    with _tenant() as conn:
        row = timer_reads.get_timer(conn, g.tenant_id, tid)
        if row is None:
            raise not_found("timer")
        return json_response(_with_escalations(conn, [row])[0])


def _finish(timer_id: UUID, verb: str, reason: str | None):
    tid = _timer_id(timer_id)
    with _tenant() as conn:
        row = timer_sql.finish_timer(conn, g.tenant_id, tid, verb, reason=reason)
        if row is None:
            raise not_found("timer")
        timer = _with_escalations(conn, [row])[0]
    wake_delivery()  # after the commit of its event (a repeat wrote none: a cheap no-op)
    return json_response(timer)


@bp.post("/v1/timers/<uuid:timer_id>/cancel")
@operation(
    "Cancel a timer",
    limited=True,
    tag="timers",
    body=CancelRequest,
    body_required=False,
    responses={200: ("Cancelled (or already was)", Timer), 404: NOT_FOUND, 409: CONFLICT},
    description="Idempotent. Steps not yet fired are recorded SKIPPED.",
)
def cancel(timer_id: UUID, body: CancelRequest):
    return _finish(timer_id, "cancel", body.reason)


@bp.post("/v1/timers/<uuid:timer_id>/complete")
@operation(
    "Complete a timer (the lead was handled)",
    limited=True,
    tag="timers",
    body=CompleteRequest,
    body_required=False,
    responses={200: ("Completed (or already was)", Timer), 404: NOT_FOUND, 409: CONFLICT},
    description="Idempotent. Records breached = completed after due_at.",
)
def complete(timer_id: UUID, body: CompleteRequest):
    return _finish(timer_id, "complete", None)


@bp.post("/v1/timers/<uuid:timer_id>/retry")
@operation(
    "Retry a dead-lettered timer",
    limited=True,
    tag="timers",
    responses={
        200: ("Re-armed (or already was, and has not failed since)", Timer),
        404: NOT_FOUND,
        409: ("The timer is not dead-lettered (FAILED), or is closed", Problem),
    },
    description=(
        "Re-arms a timer whose processing was dead-lettered (processing_status FAILED): "
        "attempts back to 0, PENDING, fired again now, from the step that failed. "
        "last_error keeps the dead letter's reason until the next attempt replaces it. "
        "Writes sla.timer.retried. Idempotent: asking again before the timer fails "
        "again answers 200 with no second event; once it has failed again, a retry "
        "re-arms it again."
    ),
)
def retry(timer_id: UUID):
    tid = _timer_id(timer_id)
    with _tenant() as conn:
        found = firing_sql.retry_timer(conn, g.tenant_id, tid)
        if found is None:
            raise not_found("timer")
        row, retried = found
        timer = _with_escalations(conn, [row])[0]
    if retried:
        try:
            schedule_wakeups([row["next_fire_at"]])
        except Exception:  # the sweep fires it anyway
            log.exception("scheduling the wake-up of retried timer %s failed", tid)
        wake_delivery()  # sla.timer.retried
    return json_response(timer)


def _lead_contract(lead_id: str, body_contract: str | None, query_contract: str | None):
    problems = text_problems({"lead_id": lead_id})
    if not PATH_PARAMS["lead_id"].accepts(lead_id):
        problems.append({"field": "lead_id", "reason": PATH_PARAMS["lead_id"].reason})
    if problems:
        raise validation_error(problems)
    if body_contract and query_contract and body_contract != query_contract:
        raise validation_error(
            [{"field": "sla_contract_id", "reason": "the body and the query disagree"}]
        )
    return body_contract or query_contract


def _finish_lead(lead_id: str, verb: str, contract: str | None, reason: str | None):
    with _tenant() as conn:
        rows = timer_sql.finish_lead_timers(
            conn, g.tenant_id, lead_id, verb, sla_contract_id=contract, reason=reason
        )
        items = _with_escalations(conn, rows)
    if items:
        wake_delivery()
    return json_response(TimerItems(items=items))


@bp.post("/v1/leads/<path:lead_id>/cancel")
@operation(
    "Cancel a lead's open timers",
    limited=True,
    tag="leads",
    body=LeadCancelRequest,
    body_required=False,
    query=ContractQuery,
    responses={200: ("The timers cancelled by this request", TimerItems)},
)
def cancel_lead(lead_id: str, body: LeadCancelRequest, query: ContractQuery):
    contract = _lead_contract(lead_id, body.sla_contract_id, query.sla_contract_id)
    return _finish_lead(lead_id, "cancel", contract, body.reason)


@bp.post("/v1/leads/<path:lead_id>/complete")
@operation(
    "Complete a lead's open timers",
    limited=True,
    tag="leads",
    body=LeadCompleteRequest,
    body_required=False,
    query=ContractQuery,
    responses={200: ("The timers completed by this request", TimerItems)},
)
def complete_lead(lead_id: str, body: LeadCompleteRequest, query: ContractQuery):
    contract = _lead_contract(lead_id, body.sla_contract_id, query.sla_contract_id)
    return _finish_lead(lead_id, "complete", contract, None)
