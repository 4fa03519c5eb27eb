"""Timers, the firing side (models/sql/firing.sql): claim due timers, lock,
apply and release them, rescue expired leases, re-arm dead letters, list
the upcoming wake-up instants, and read the warnings recorded.

Functions take a SQLAlchemy ``Connection`` and leave transactions to the
caller. tasks/firing.py plans what a claimed batch does (models/sla.py) and
writes it here in one statement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from . import events, metrics
from .errors import TimerConflict
from .outbox import insert_events, to_json
from .sql import Queries
from .timers import lock_timer

SQL = Queries("firing.sql")

LEASE_EXPIRED = "lease expired: the worker processing this timer was lost"


def claim_due(
    conn: Connection, token: UUID, now: datetime | None, limit: int, lease_seconds: int
) -> list[dict[str, Any]]:
    """Mark up to ``limit`` due timers PROCESSING under ``token``, skipping rows
    another claimer holds, and return what planning them needs, with
    ``claimed_at``, the database's time of the claim. Commit right after, so
    the lease is visible to all. ``now`` overrides the database's clock (tests;
    production passes None)."""
    result = conn.execute(
        SQL.claim_due.text, {"token": token, "now": now, "limit": limit, "lease": lease_seconds}
    )
    # All rows at once, zipped with the keys: a burst's batch is a thousand of them.
    keys = list(result.keys())
    return [dict(zip(keys, row, strict=True)) for row in result.all()]


def lock_claimed(conn: Connection, token: UUID, ids: Sequence[UUID]) -> set[UUID]:
    """Lock the claimed rows that still carry ``token`` and return their ids.

    Run first in the transaction that fires them, before any action: a timer
    cancelled, completed or rescued since the claim has lost the token and is
    left alone. Holding the lock is what renews the lease: the rescue skips
    locked rows, so it cannot take them while the transaction works."""
    return set(conn.execute(SQL.lock_claimed.text, {"ids": list(ids), "token": token}).scalars())


def release_claimed(conn: Connection, token: UUID, ids: Sequence[UUID]) -> int:
    """Give claimed rows back (PENDING, next_fire_at unchanged) without counting
    an attempt: their processing was not tried, or failed for a reason that was
    not theirs (a transient database error)."""
    return conn.execute(SQL.release_claimed.text, {"ids": list(ids), "token": token}).rowcount


def apply_fired(
    conn: Connection,
    token: UUID,
    *,
    events: Sequence[Mapping[str, Any]],
    steps: Sequence[Mapping[str, Any]],
    step_events: Sequence[Mapping[str, Any]],
    updates: Sequence[Mapping[str, Any]],
    now: datetime,
    warnings: Sequence[Mapping[str, Any]] = (),
    warning_events: Sequence[Mapping[str, Any]] = (),
) -> set[UUID]:
    """Write a planned batch (warning rows, events, step rows, each row's event
    only if the row is new, and the new timer states) in one statement;
    returns the ids of the timers it applied to."""
    result = conn.execute(
        SQL.apply_fired.text,
        {
            "ids": [u["id"] for u in updates],
            "token": token,
            "now": now,
            "events": to_json(events),
            "steps": to_json(steps),
            "step_events": to_json(step_events),
            "updates": to_json(updates),
            "warnings": to_json(warnings),
            "warning_events": to_json(warning_events),
        },
    )
    return set(result.scalars())


def rescue_expired_leases(
    conn: Connection, max_attempts: int, *, now: datetime | None = None
) -> int:
    """Return rows whose claimer vanished (killed mid-batch) to PENDING,
    counting an attempt; dead-letter those that reach ``max_attempts``. Returns
    how many were rescued (dead letters included). ``now`` overrides the
    database's clock (tests)."""
    row = conn.execute(
        SQL.rescue_expired.text,
        {"now": now, "max_attempts": max_attempts, "error": LEASE_EXPIRED},
    ).one()
    metrics.count_on_commit(conn, metrics.LEASES_RESCUED, row.rescued)
    metrics.count_on_commit(conn, metrics.DEAD_LETTERS.labels("lease_expired"), row.failed)
    return row.rescued


def retry_timer(
    conn: Connection, tenant_id: UUID, timer_id: UUID
) -> tuple[dict[str, Any], bool] | None:
    """Re-arm a dead-lettered timer: (timer, retried now?), or None if the
    tenant has no such timer.

    A FAILED open timer goes back to PENDING, due now by the database's clock,
    with its attempts reset and ``retries`` + 1; ``last_error`` keeps the reason
    of the dead letter until the next attempt's outcome replaces it, and
    ``sla.timer.retried`` is written. Asking again before it fails again changes
    nothing (False): it was retried already. Anything else is a conflict."""
    row = lock_timer(conn, tenant_id, timer_id)
    if row is None:
        return None
    if row["processing_status"] == "FAILED" and row["status"] in ("ACTIVE", "DUE"):
        retried = dict(conn.execute(SQL.rearm_failed.text, {"id": timer_id}).mappings().one())
        insert_events(
            conn,
            [
                events.timer_event(
                    retried,
                    events.RETRIED,
                    retried["updated_at"],
                    retries=retried["retries"],
                    previous_error=row["last_error"],
                )
            ],
        )
        return retried, True
    if row["retries"] > 0 and row["processing_status"] != "FAILED":
        return row, False
    if row["processing_status"] == "FAILED":
        raise TimerConflict(
            f"timer is {row['status'].lower()} and cannot be retried: only an open timer can"
        )
    raise TimerConflict("timer has not failed: only a dead-lettered (FAILED) timer can be retried")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def upcoming_fire_times(
    conn: Connection, start: datetime, end: datetime, bucket_ms: int
) -> list[datetime]:
    """The wake-up instants of PENDING timers due in [start, end): each due
    instant rounded up to ``bucket_ms`` (as ``models.sla.wakeup_instant`` does),
    one per bucket, however many timers share it."""
    rows = conn.execute(
        SQL.upcoming_fire_times.text, {"start": start, "end": end, "bucket": bucket_ms}
    ).scalars()
    return [_EPOCH + timedelta(milliseconds=ms) for ms in rows]


def warnings_for(
    conn: Connection, tenant_id: UUID, timer_ids: Sequence[UUID]
) -> dict[UUID, list[dict[str, Any]]]:
    """The warning rows (sent or skipped) of several of a tenant's timers in
    one query, in threshold order."""
    found: dict[UUID, list[dict[str, Any]]] = {t: [] for t in timer_ids}
    if timer_ids:
        rows = conn.execute(
            SQL.warnings_for.text, {"tenant": tenant_id, "ids": list(timer_ids)}
        ).mappings()
        for r in rows:
            found[r["timer_id"]].append(dict(r))
    return found
