"""Webhook deliveries, the worker side (models/sql/deliveries.sql): claim due
deliveries, decide and record their attempts' outcomes, disable a
subscription that keeps failing.

Functions take a SQLAlchemy ``Connection`` and leave transactions to the
caller; the workers' own, ``claim`` and ``record``, run the same statements on
a psycopg connection, prepared (the claim in autocommit, its rows as
``Claimed`` tuples): SQLAlchemy's execution path and a dict per row cost the
delivery loop more CPU than the statements themselves. tasks/delivery.py
sends the requests. The decisions are pure:

- a 2xx is DELIVERED; anything else is a failed attempt, retried after the
  schedule's next delay (``SLA_WEBHOOK_RETRY_SCHEDULE``: entry i is the delay
  before attempt i + 1), or FAILED once the schedule has run out;
- a 429 or 503 with ``Retry-After`` (seconds or an HTTP date) waits at least
  that long, capped at ``MAX_RETRY_AFTER_S``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import Connection

from .outbox import SQL as OUTBOX_SQL
from .outbox import insert_events as insert_events  # re-exported
from .outbox import to_json
from .sql import Queries

SQL = Queries("deliveries.sql")

DELIVERED, PENDING, FAILED = "DELIVERED", "PENDING", "FAILED"
WEBHOOK_DISABLED = "webhook.disabled"
# A receiver may ask for a pause, not for an endless one.
MAX_RETRY_AFTER_S = 24 * 3600
RETRY_AFTER_STATUSES = frozenset({429, 503})
ERROR_MAX_CHARS = 1000


@dataclass(frozen=True)
class Outcome:
    """One attempt's result, as tasks/delivery.py saw it."""

    delivery_id: int
    subscription_id: UUID
    token: UUID
    attempt: int  # this attempt's number, from 1
    status_code: int | None
    duration_ms: int
    error: str | None = None
    retry_after_s: float | None = None
    # With delivery_id, the row's primary key (the record statement's lookup):
    # required, since an outcome without it would match no row and be dropped.
    tenant_id: UUID = field(kw_only=True)

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` in seconds from ``now`` (delta-seconds or an HTTP date);
    None if absent or unreadable. Capped at ``MAX_RETRY_AFTER_S``."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value), MAX_RETRY_AFTER_S))
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    seconds = (at - (now or datetime.now(UTC))).total_seconds()
    return float(min(max(seconds, 0.0), MAX_RETRY_AFTER_S))


def decide(outcome: Outcome, schedule: Sequence[int]) -> tuple[str, float]:
    """(new status, seconds until the next attempt) after ``outcome``."""
    if outcome.ok:
        return DELIVERED, 0.0
    if outcome.attempt >= len(schedule):
        return FAILED, 0.0
    delay = float(schedule[outcome.attempt])
    if outcome.retry_after_s is not None and outcome.status_code in RETRY_AFTER_STATUSES:
        delay = max(delay, min(outcome.retry_after_s, MAX_RETRY_AFTER_S))
    return PENDING, delay


class Claimed(NamedTuple):
    """A claimed delivery, ready to send: the claim statement's columns, in order."""

    id: int
    tenant_id: UUID
    subscription_id: UUID
    attempts: int  # attempts before this one
    url: str
    secret: str
    previous_secret: str | None  # still signing beside ``secret`` (a rotation's grace)
    webhook_id: str  # the envelope's id, ``evt_<outbox id>``
    body: str  # the envelope's exact text, signed and sent as it is
    correlation_id: str | None


def _claimed_rows(cursor: psycopg.Cursor) -> Any:
    names = tuple(column.name for column in cursor.description or ())
    if names and names != Claimed._fields:  # the statement and the tuple went apart
        raise RuntimeError(f"claim_due returns {names}, not {Claimed._fields}")
    return Claimed._make


def claim(
    driver: psycopg.Connection,
    token: UUID,
    *,
    limit: int,
    max_in_flight: int,
    failing_in_flight: int | None = None,
    lease_seconds: float,
    first_delay: float,
    now: datetime | None = None,
    failing_after: float = 0.0,
) -> list[Claimed]:
    """``claim_due`` on a psycopg connection. In autocommit the statement is its
    own transaction, committed when it returns (as the delivery loop runs it);
    otherwise it joins the connection's transaction.

    Not prepared: PostgreSQL plans each claim for its parameters. A prepared
    claim switched to the generic plan after its fifth run whenever the
    estimates of that moment favoured it, and that plan cost ≈ 24 ms a claim
    instead of ≈ 2 (P6d: tenant B's deliveries then waited 10-30 s, in one run
    of three, at random)."""
    params = {
        "token": token,
        "limit": limit,
        "max_in_flight": max_in_flight,
        "failing_in_flight": max_in_flight if failing_in_flight is None else failing_in_flight,
        "failing_after": float(failing_after),
        "lease": float(lease_seconds),
        "first_delay": float(first_delay),
        "now": now,
    }
    with driver.cursor(row_factory=_claimed_rows) as cursor:
        cursor.execute(SQL.claim_due.psycopg, params, prepare=False)
        return cursor.fetchall()


def claim_due(conn: Connection, token: UUID, **options: Any) -> list[dict[str, Any]]:
    """Claim up to ``limit`` due deliveries under ``token`` (see the SQL; the
    keywords of ``claim``) in ``conn``'s transaction, and return each with its
    subscription's URL and secrets and its envelope (the fields of ``Claimed``).
    Commit right after, so the lease and the in-flight count are visible to all."""
    driver: psycopg.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    return [row._asdict() for row in claim(driver, token, **options)]


def _health(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """Per subscription: did its last outcome of the round succeed, did any."""
    health: dict[UUID, dict[str, Any]] = {}
    for o in outcomes:  # in the order they completed
        ok = o.ok
        h = health.get(o.subscription_id)
        if h is None:
            health[o.subscription_id] = {"id": o.subscription_id, "ok": ok, "succeeded": ok}
        else:
            h["ok"] = ok
            h["succeeded"] = h["succeeded"] or ok
    return list(health.values())


def record_outcomes(
    conn: Connection,
    outcomes: Sequence[Outcome],
    schedule: Sequence[int],
    *,
    disable_after_seconds: int,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Record a round's attempts in one statement, then write a
    ``webhook.disabled`` event for each subscription this round disabled
    (returned). Outcomes of deliveries taken over since their claim are
    dropped. In ``conn``'s transaction (``record`` on its driver connection)."""
    driver: psycopg.Connection = conn.connection.driver_connection  # type: ignore[assignment]
    return record(driver, outcomes, schedule, disable_after_seconds=disable_after_seconds, now=now)


def record(
    driver: psycopg.Connection,
    outcomes: Sequence[Outcome],
    schedule: Sequence[int],
    *,
    disable_after_seconds: int,
    now: datetime | None = None,
    decisions: Sequence[tuple[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """``record_outcomes`` on a psycopg connection, in its transaction (the
    caller commits): SQLAlchemy's execution path cost more CPU than the rest of
    a round's recording. ``decisions``: ``decide()`` of each outcome, if the
    caller has them already."""
    if not outcomes:
        return []
    if decisions is None:
        decisions = [decide(o, schedule) for o in outcomes]
    params = {
        "o_tenant_id": [o.tenant_id for o in outcomes],
        "o_id": [o.delivery_id for o in outcomes],
        "o_token": [o.token for o in outcomes],
        "o_attempt": [o.attempt for o in outcomes],
        "o_status": [status for status, _ in decisions],
        "o_delay": [float(delay) for _, delay in decisions],
        "o_status_code": [o.status_code for o in outcomes],
        "o_duration_ms": [o.duration_ms for o in outcomes],
        "o_error": [None if o.error is None else o.error[:ERROR_MAX_CHARS] for o in outcomes],
        "health": to_json(_health(outcomes)),
        "disable_after": disable_after_seconds,
        "disabled_reason": disabled_reason(disable_after_seconds),
        "now": now,
    }
    with driver.cursor(row_factory=dict_row) as cursor:
        cursor.execute(SQL.record_outcomes.psycopg, params, prepare=True)
        disabled = [r for r in cursor.fetchall() if r["disabled_now"]]
        if disabled:
            events = to_json([disabled_event(s) for s in disabled])
            cursor.execute(OUTBOX_SQL.insert_events.psycopg, {"rows": events})
    return disabled


def disabled_reason(disable_after_seconds: int) -> str:
    return f"every attempt failed for {disable_after_seconds} s"


def disabled_event(sub: Mapping[str, Any]) -> dict[str, Any]:
    """The outbox row of ``webhook.disabled``: the tenant's, of no timer, once
    per automatic disable of the subscription."""
    return {
        "tenant_id": sub["tenant_id"],
        "timer_id": None,
        "event_type": WEBHOOK_DISABLED,
        "payload": {
            "type": WEBHOOK_DISABLED,
            "subscription_id": sub["id"],
            "url": sub["url"],
            "failing_since": sub["failing_since"],
            "reason": sub["disabled_reason"],
            "occurred_at": sub["at"],
        },
        "correlation_id": f"webhook:{sub['id']}",
        "idempotency_key": f"webhook:{sub['id']}:disabled:{sub['disable_count']}",
        "created_at": sub["at"],
    }
