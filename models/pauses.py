"""Pause and resume timers (models/sql/pauses.sql).

A PAUSED timer neither warns nor escalates: pausing clears ``next_fire_at``
and the claim token (a firing batch that claimed it loses it, as after a
cancel), and keeps the status to return to in ``paused_from``. Resuming moves
the whole schedule by the working time paused (``shift_seconds`` grows by
``business_seconds(calendar, paused_at, resumed_at)``, wall time without a
calendar), so ``due_at`` and every pending warning and step instant move by
exactly that (models/sla.py), and adds the wall time to ``paused_seconds``.

Both take rows the caller locked (``lock_timer``, or a lead's open timers in id
order) and leave the transaction to it; pausing a paused timer or resuming a
running one changes nothing and writes no event. After the commit the caller
schedules a wake-up for each resumed timer's ``next_fire_at`` and wakes
webhook delivery for the events. The API (web/pauses.py) and a contract's
``pause_on``/``resume_on`` lead events use them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from . import events
from .config import get_settings
from .errors import TimerConflict
from .outbox import insert_events, to_json
from .schema import OPEN_STATUSES
from .sla import ladder, next_instant, schedule_of
from .sql import Queries
from .timers import lock_timer

SQL = Queries("pauses.sql")

# The open statuses a pause applies to.
RUNNING = tuple(s for s in OPEN_STATUSES if s != "PAUSED")


class TimerClosed(TimerConflict):
    """Pausing or resuming a completed or cancelled timer (409)."""

    def __init__(self, status: str, verb: str) -> None:
        self.status = status
        super().__init__(f"timer is {status.lower()} and cannot be {verb}: only an open timer can")


def pause_timers(
    conn: Connection,
    timers: Sequence[Mapping[str, Any]],
    reason: str | None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Pause the running timers among ``timers`` (locked rows); returns them
    paused. Paused and closed timers are left as they are. ``now`` overrides
    the database's clock (tests)."""
    ids = [t["id"] for t in timers if t["status"] in RUNNING]
    if not ids:
        return []
    paused = [
        dict(r)
        for r in conn.execute(
            SQL.pause_timers.text, {"ids": ids, "now": now, "reason": reason}
        ).mappings()
    ]
    insert_events(
        conn,
        [
            events.timer_event(
                t,
                events.PAUSED,
                t["paused_at"],
                step=events.pause_key(t["paused_at"]),
                reason=reason,
                paused_at=t["paused_at"],
                paused_from=t["paused_from"],
            )
            for t in paused
        ],
    )
    return paused


def resume_timers(
    conn: Connection, timers: Sequence[Mapping[str, Any]], now: datetime | None = None
) -> list[dict[str, Any]]:
    """Resume the paused timers among ``timers`` (locked rows, all columns);
    returns them resumed, each with its new ``next_fire_at`` (None: nothing
    left to fire). Running and closed timers are left as they are."""
    paused = [t for t in timers if t["status"] == "PAUSED"]
    if not paused:
        return []
    resumed_at = conn.execute(SQL.db_now.text, {"now": now}).scalar_one()
    cap = get_settings().max_step_repeats
    rows = []
    for t in paused:
        status = t["paused_from"]
        # A clock that went back never makes a negative pause.
        since = min(t["paused_at"], resumed_at)
        schedule = schedule_of(t).shifted(since, resumed_at)
        nxt = next_instant(
            status=status,
            schedule=schedule,
            steps=ladder(t["escalation_steps"]),
            steps_done=t["steps_done"],
            thresholds=t["warning_thresholds"],
            warnings_done=t["warnings_done"],
            repeat_cap=cap,
        )
        if t["processing_status"] == "FAILED":
            processing, nxt = "FAILED", None  # a dead letter waits for its retry
        else:
            processing = "PENDING" if nxt is not None else "COMPLETED"
        rows.append(
            {
                "id": t["id"],
                "status": status,
                "paused_seconds": (resumed_at - since).total_seconds(),
                "shift_seconds": schedule.shift_seconds,
                "due_at": schedule.due,
                "next_fire_at": nxt,
                "processing_status": processing,
            }
        )
    resumed = [
        dict(r)
        for r in conn.execute(
            SQL.resume_timers.text, {"rows": to_json(rows), "now": resumed_at}
        ).mappings()
    ]
    before = {t["id"]: t for t in paused}
    insert_events(
        conn,
        [
            events.timer_event(
                t,
                events.RESUMED,
                resumed_at,
                step=events.pause_key(before[t["id"]]["paused_at"]),
                paused_at=before[t["id"]]["paused_at"],
                resumed_at=resumed_at,
                paused_for_seconds=max(
                    0.0, (resumed_at - before[t["id"]]["paused_at"]).total_seconds()
                ),
                paused_seconds=t["paused_seconds"],
                previous_due_at=before[t["id"]]["due_at"],
            )
            for t in resumed
        ],
    )
    return resumed


def pause_timer(
    conn: Connection,
    tenant_id: UUID,
    timer_id: UUID,
    reason: str | None,
    now: datetime | None = None,
) -> tuple[dict[str, Any], bool] | None:
    """Pause one of the tenant's timers: (timer, paused now?), None if it has
    no such timer. A paused timer is returned unchanged; a closed one is a
    TimerConflict naming its status."""
    row = lock_timer(conn, tenant_id, timer_id)
    if row is None:
        return None
    if row["status"] not in OPEN_STATUSES:
        raise TimerClosed(row["status"], "paused")
    paused = pause_timers(conn, [row], reason, now)
    return (paused[0], True) if paused else (row, False)


def resume_timer(
    conn: Connection, tenant_id: UUID, timer_id: UUID, now: datetime | None = None
) -> tuple[dict[str, Any], bool] | None:
    """Resume one of the tenant's timers: (timer, resumed now?), None if it has
    no such timer. A running timer is returned unchanged; a closed one is a
    TimerConflict naming its status."""
    row = lock_timer(conn, tenant_id, timer_id)
    if row is None:
        return None
    if row["status"] not in OPEN_STATUSES:
        raise TimerClosed(row["status"], "resumed")
    resumed = resume_timers(conn, [row], now)
    return (resumed[0], True) if resumed else (row, False)
