"""What closing a timer records (models/sql/closing.sql): its remaining (step,
repeat) runs and warnings, SKIPPED, so that nothing of a cancelled or
completed timer can fire any more, whatever a firing batch that claimed it
still holds (it lost its claim token, and these rows take the unique keys its
inserts would need).

Runs inside the closing transaction, on rows the caller locked and closed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from .config import get_settings
from .outbox import to_json
from .sla import schedule_of
from .sql import Queries

SQL = Queries("closing.sql")


def skip_remaining(
    conn: Connection, closed: Sequence[Mapping[str, Any]], now: datetime | None = None
) -> None:
    """Record the closed timers' runs and warnings not yet recorded SKIPPED.
    ``closed`` are full sla_timers rows; ``now`` overrides the database's clock."""
    if not closed:
        return
    conn.execute(
        SQL.skip_remaining_steps.text,
        {
            "ids": [t["id"] for t in closed],
            "now": now,
            "repeat_cap": get_settings().max_step_repeats,
        },
    )
    # Each warning at the instant it was for: a calendar's business time is
    # computed here, not in SQL.
    pending = [
        {
            "tenant_id": t["tenant_id"],
            "timer_id": t["id"],
            "threshold": threshold,
            "scheduled_at": schedule_of(t).warning_at(threshold),
            "correlation_id": t["correlation_id"],
        }
        for t in closed
        for threshold in t["warning_thresholds"][t["warnings_done"] :]
    ]
    if pending:
        conn.execute(SQL.skip_remaining_warnings.text, {"warnings": to_json(pending), "now": now})
