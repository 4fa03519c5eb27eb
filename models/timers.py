"""Timers, the API side: start, read, list, cancel and complete
(models/sql/timers.sql).

Functions take a SQLAlchemy ``Connection`` and leave transactions to the
caller. The start statement, the API's hot path, runs on the psycopg
connection under the SQLAlchemy one (same transaction): SQLAlchemy's
per-statement overhead costs as much CPU as the statement's round trip on a
small VM. Its fast path, ``try_start_timers``, takes the engine instead: its
one statement is its own transaction, on a pooled connection in autocommit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Connection, Engine
from uuid_utils.compat import uuid7

from . import events, metrics
from .closing import skip_remaining
from .errors import DuplicateStart, KeyReused, TimerConflict
from .outbox import insert_events, to_json
from .schema import OPEN_STATUSES
from .sql import Queries

SQL = Queries("timers.sql")


@dataclass(frozen=True)
class NewTimer:
    lead_id: str
    sla_contract_id: str
    # None: the start statement dates the timer with the database's clock.
    started_at: datetime | None
    window_seconds: int
    escalation_steps: list[dict[str, Any]]
    correlation_id: str
    metadata: dict[str, Any]
    idempotency_key: str | None = None
    request_fingerprint: str | None = None
    # The resolved policy (models/contracts.py): the calendar the timer counts
    # in, its warnings, its contract version and snapshot, and what it waits
    # for first (None: due_at).
    calendar: dict[str, Any] | None = None
    warning_thresholds: list[int] = field(default_factory=list)
    contract_version: int | None = None
    contract_snapshot: dict[str, Any] | None = None
    next_fire_at: datetime | None = None
    # Not resolved: the insert skips it when the tenant defined a contract by
    # its sla_contract_id, and the caller then resolves it and starts it again.
    unresolved: bool = False


# The single start's fast path sends both statements in one simple query: one
# round trip, and one implicit transaction, so the tenant setting holds for the
# insert and ends with it. A simple query cannot use psycopg's prepared
# statements, so the start is prepared once per connection by hand: planning
# it costs more than running it.
_PREPARED_START = SQL.start_timers.prepared(
    "sla_start_timers", [("tenant", "uuid"), ("timers", "text"), ("events", "text")]
)
_SCOPED_START = (
    "SELECT set_config('app.tenant_id', %(tenant_text)s, true); " + _PREPARED_START.execute
)


def new_timer_id() -> UUID:
    """A new timer's id: a UUIDv7 (time first), so a start inserts at the
    right edge of the indexes keyed by id instead of at a random leaf. At 10M
    timers random (v4) ids cost a start a quarter more PostgreSQL CPU (P7)."""
    return uuid7()


def _driver(conn: Connection) -> psycopg.Connection:
    """The psycopg connection under ``conn``, in the same transaction."""
    return conn.connection.driver_connection  # type: ignore[return-value]


def _start_params(
    tenant_id: UUID, starts: Sequence[tuple[UUID, NewTimer, datetime | None]]
) -> dict[str, Any]:
    """The ``start_timers`` statement's parameters: the timers and their started events."""
    timers, started = [], []
    for timer_id, new, due in starts:
        # Every field of the start is a column of the statement's recordset.
        timer = {**vars(new), "id": timer_id, "tenant_id": tenant_id, "due_at": due}
        timers.append(timer)
        # The policy in the started event; a plain start's event is as before contracts.
        extra = ("contract_version", "warning_thresholds", "calendar")
        policy = {k: timer[k] for k in extra if timer[k]}
        started.append(
            events.timer_event(
                timer,
                events.STARTED,
                None,  # the statement puts the stored times in its place
                window_seconds=new.window_seconds,
                escalation_steps=new.escalation_steps,
                metadata=new.metadata,
                **policy,
            )
        )
    return {"tenant": tenant_id, "timers": to_json(timers), "events": to_json(started)}


def _insert_timers(
    conn: Connection,
    tenant_id: UUID,
    starts: Sequence[tuple[UUID, NewTimer, datetime | None]],
    *,
    scope: bool = False,
) -> dict[UUID, dict[str, Any]]:
    """Lock the pairs and insert what ``start_timers`` (the statement) does not
    skip; with ``scope``, first scope the (implicit, autocommit) transaction to
    the tenant. The stored rows and their started events carry the statement's
    times."""
    params = _start_params(tenant_id, starts)
    if not scope:
        cursor = _driver(conn).cursor(row_factory=dict_row)
        rows = cursor.execute(SQL.start_timers.psycopg, params).fetchall()
    else:
        rows = _scoped_start(_driver(conn), conn.connection.info, tenant_id, params)
    metrics.count_on_commit(conn, metrics.TIMERS_STARTED, len(rows))
    return {r["id"]: r for r in rows}


def _scoped_start(
    driver: psycopg.Connection, info: dict, tenant_id: UUID, params: dict[str, Any]
) -> list[dict[str, Any]]:
    """The start statement with the tenant scope in one simple query (an
    implicit transaction: ``driver`` is in autocommit). ``info`` is the pooled
    connection's, where the prepared statement is noted."""
    # psycopg may DEALLOCATE ALL (after a failed transaction, say): then
    # prepare again; nothing of the failed message was committed.
    cursor = psycopg.ClientCursor(driver, row_factory=dict_row)
    scoped = {**params, "tenant_text": str(tenant_id)}
    for attempt in (1, 2):
        if not info.get(_PREPARED_START.name):
            driver.execute(_PREPARED_START.prepare)
            info[_PREPARED_START.name] = True
        try:
            cursor.execute(_SCOPED_START, scoped)
            break
        except psycopg.errors.InvalidSqlStatementName:
            info[_PREPARED_START.name] = False
            if attempt == 2:
                raise
    cursor.nextset()
    return cursor.fetchall()


def stored_by_key(
    conn: Connection, tenant_id: UUID, keys: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """A tenant's timers stored under some idempotency keys, by key (replays)."""
    if not keys:
        return {}
    rows = conn.execute(SQL.timers_by_keys.text, {"tenant": tenant_id, "keys": list(keys)})
    return {r["idempotency_key"]: dict(r) for r in rows.mappings()}


# How many times a start supersedes and inserts again the timers its insert
# skipped. One more round is all a race with a close can need (see below); the
# bound only guarantees an end.
_START_ROUNDS = 3


def start_timers(
    conn: Connection,
    tenant_id: UUID,
    starts: Sequence[tuple[NewTimer, datetime | None]],
    now: datetime | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Start timers, given as (timer, due_at) with distinct (lead, contract)
    pairs; returns (timers in the given order, created). A timer without
    ``started_at`` (its due_at None) is dated by the database's clock, and so is
    the supersede of an open timer unless ``now`` is given (tests).

    Either every timer is created, or every one is an idempotent replay (each
    carries an idempotency key stored with the same request fingerprint) and
    the stored timers are returned; anything in between is a TimerConflict
    (KeyReused for a key used with another body), and the caller must roll the
    transaction back. A lead's open timer for the same contract is cancelled
    first with reason "superseded".

    Round trips do not grow with the number of timers: one statement locks
    every pair, one inserts the timers with their started events. Only timers
    that insert skipped cost more: a replay lookup, or the supersede and a
    second insert.
    """
    pairs = [(new.lead_id, new.sla_contract_id) for new, _ in starts]
    if len(set(pairs)) != len(pairs):
        raise ValueError("one start per (lead_id, sla_contract_id) pair")
    work = [(new_timer_id(), new, due) for new, due in starts]
    created = _insert_timers(conn, tenant_id, work)
    if len(created) == len(work):
        return [created[i] for i, _, _ in work], True

    skipped = [w for w in work if w[0] not in created]
    stored = stored_by_key(
        conn, tenant_id, [new.idempotency_key for _, new, _ in skipped if new.idempotency_key]
    )
    if stored:
        replayed = [stored.get(new.idempotency_key) for _, new, _ in work]  # type: ignore[arg-type]
        if created or any(
            r is None or r["request_fingerprint"] != new.request_fingerprint
            for r, (_, new, _) in zip(replayed, work, strict=True)
        ):
            raise KeyReused()
        return replayed, False  # type: ignore[return-value]

    # Supersede the open timers of the skipped pairs, then insert those again.
    # The pairs' advisory locks are ours until commit, so no other start can
    # open a timer for them; but a cancel or complete (which do not take the
    # lock) may close one between the insert and the lookup, leaving nothing to
    # supersede: inserting again then succeeds. A round that finds no open
    # timer and inserts nothing means the start repeats an existing one (the
    # transaction is rolled back, superseded timers included).
    for _ in range(_START_ROUNDS):
        previous = (
            conn.execute(
                SQL.open_for_pairs.text,
                {
                    "tenant": tenant_id,
                    "leads": [new.lead_id for _, new, _ in skipped],
                    "contracts": [new.sla_contract_id for _, new, _ in skipped],
                },
            )
            .mappings()
            .all()
        )
        close_timers(conn, previous, "cancel", now, reason="superseded")
        inserted = _insert_timers(conn, tenant_id, skipped)
        created |= inserted
        skipped = [w for w in skipped if w[0] not in created]
        if not skipped or not (previous or inserted):
            break
    if skipped:
        keys = [new.idempotency_key for _, new, _ in skipped if new.idempotency_key]
        if stored_by_key(conn, tenant_id, keys):  # taken meanwhile, by a start of other leads
            raise KeyReused()
        raise DuplicateStart(
            "a timer with the same lead_id, sla_contract_id and started_at already exists"
        )
    return [created[i] for i, _, _ in work], True


def try_start_timers(
    engine: Engine,
    tenant_id: UUID,
    starts: Sequence[tuple[UUID, NewTimer, datetime | None]],
) -> dict[UUID, dict[str, Any]]:
    """The fast path of ``start_timer``, for one start or several of one
    tenant (web/start_groups.py): one statement that is its own transaction, so
    a start costs one round trip instead of three (BEGIN, statement, COMMIT).
    The tenant scope is set by a statement sent in the same message.

    It runs on a pooled connection taken straight from ``engine``'s pool, in
    autocommit for the statement: no SQLAlchemy ``Connection`` is built, and
    no isolation level is set and reset through the dialect (together 8 % of
    the web worker's Python per start in bench/results/profiles/
    p4-gunicorn-single-before.svg).

    Returns the new timers by id. A start missing from them wrote nothing and
    needs ``start_timer``: its lead has an open timer to supersede, its
    idempotency key is taken (a replay or a conflict), or it repeats an
    existing start. Each row is its own ``ON CONFLICT DO NOTHING``, so one
    start skipped leaves the others written; the statement is atomic, so
    there is nothing in between.
    """
    params = _start_params(tenant_id, starts)
    pooled = engine.raw_connection()
    try:
        driver: psycopg.Connection = pooled.driver_connection  # type: ignore[assignment]
        # Idle between checkouts (the pool rolls back on return), so autocommit
        # can be switched without a round trip.
        driver.autocommit = True
        try:
            rows = _scoped_start(driver, pooled.info, tenant_id, params)
        finally:
            if not driver.closed:
                driver.autocommit = False
    finally:
        pooled.close()
    # Autocommit: the statement has committed.
    metrics.TIMERS_STARTED.inc(len(rows))
    return {r["id"]: r for r in rows}


def start_timer(
    conn: Connection,
    tenant_id: UUID,
    new: NewTimer,
    due: datetime | None,
    now: datetime | None = None,
) -> tuple[dict[str, Any], bool]:
    """Start a timer; returns (timer, created). A replay of the same idempotency key
    and body returns the stored timer; the same key with another body is KeyReused.

    Starts for one lead and contract are serialized by an advisory lock, so the
    supersede-then-insert never leaves two open timers behind.
    """
    try:
        rows, created = start_timers(conn, tenant_id, [(new, due)], now)
    except DuplicateStart:
        started = new.started_at.isoformat() if new.started_at else "the same instant"
        raise DuplicateStart(
            f"a timer for lead {new.lead_id!r} and contract {new.sla_contract_id!r} "
            f"started at {started} already exists"
        ) from None
    return rows[0], created


def close_timers(
    conn: Connection,
    timers: Sequence[Mapping[str, Any]],
    verb: str,
    now: datetime | None = None,
    *,
    reason: str | None = None,
    at: datetime | None = None,
) -> list[dict[str, Any]]:
    """Cancel or complete open timers (already locked by the caller): their
    remaining (step, repeat) runs and warnings are recorded SKIPPED so they
    can never fire, and one event per timer is written. ``now`` overrides the
    database's clock (tests); ``at`` is when the lead was handled, if not now
    (a lead event's occurred_at): it dates completed_at or cancelled_at and
    decides breached."""
    if not timers:
        return []
    status, event_type = (
        ("CANCELLED", events.CANCELLED) if verb == "cancel" else ("COMPLETED", events.COMPLETED)
    )
    ids = [t["id"] for t in timers]
    closed = [
        dict(r)
        for r in conn.execute(
            SQL.close_timers.text,
            {"ids": ids, "now": now, "at": at, "status": status, "reason": reason},
        ).mappings()
    ]
    skip_remaining(conn, closed, now)
    metrics.closed(conn, verb, closed)
    # Events carry the instant the row recorded (the database's, unless given).
    insert_events(
        conn,
        [
            events.timer_event(t, event_type, t["updated_at"], reason=reason)
            if verb == "cancel"
            else events.timer_event(t, event_type, t["updated_at"], breached=t["breached"])
            for t in closed
        ],
    )
    return closed


def lock_timer(conn: Connection, tenant_id: UUID, timer_id: UUID) -> dict[str, Any] | None:
    """One of the tenant's timers, locked until the transaction ends."""
    row = conn.execute(SQL.lock_timer.text, {"tenant": tenant_id, "id": timer_id}).mappings()
    found = row.first()
    return None if found is None else dict(found)


def finish_timer(
    conn: Connection,
    tenant_id: UUID,
    timer_id: UUID,
    verb: str,
    now: datetime | None = None,
    reason: str | None = None,
) -> dict[str, Any] | None:
    """Cancel or complete one timer; None if the tenant has no such timer.
    Repeating the verb is a no-op; the other verb on a closed timer is a conflict."""
    row = lock_timer(conn, tenant_id, timer_id)
    if row is None:
        return None
    done = "CANCELLED" if verb == "cancel" else "COMPLETED"
    if row["status"] == done:
        return row
    if row["status"] not in OPEN_STATUSES:
        raise TimerConflict(f"timer is {row['status'].lower()} and cannot be {done.lower()}")
    return close_timers(conn, [row], verb, now, reason=reason)[0]


def finish_lead_timers(
    conn: Connection,
    tenant_id: UUID,
    lead_id: str,
    verb: str,
    now: datetime | None = None,
    *,
    sla_contract_id: str | None = None,
    reason: str | None = None,
) -> list[dict[str, Any]]:
    rows = (
        conn.execute(
            SQL.lead_open_timers.text,
            {
                "tenant": tenant_id,
                "lead": lead_id,
                "open": list(OPEN_STATUSES),
                "contract": sla_contract_id,
            },
        )
        .mappings()
        .all()
    )
    return close_timers(conn, rows, verb, now, reason=reason)
