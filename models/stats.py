"""Compliance stats of a tenant's timers started in a range, and the rollup
that keeps them fast (models/sql/reports.sql; definitions in docs/reports.md).

What never changes once written is folded into ``sla_stats_rollup``, per UTC
hour and UTC day of the timer's ``started_at`` and contract: a closed timer's
outcome and time to complete (COMPLETED and CANCELLED are final), and every
step and warning row (never updated). ``fold`` does it for one tenant and
``fold_all`` for every tenant, each minute in the worker (tasks/stats.py).
Closes are found through their outbox events in the pull feed's order, rows
through their writing transaction's id, both only below the snapshot's
horizon (models/feed.py says why that misses nothing), so each is folded
exactly once. ``stats`` reads whole days and hours from the rollup and counts
the rest live: what the fold has not reached yet, the minutes at the range's
ends, and the open timers, whose figures change with time.

Figures (``compute``):

- started: every timer started in the range.
- completed_within_sla / completed_late: COMPLETED, at or before due / after it.
- breached: completed late, or open and past due (a paused timer counts when
  it was already past due when paused: its due time moves on resume).
- compliance_percent: within / (within + breached) * 100; None when neither.
  Timers still open and not yet due, and cancelled ones, are undecided.
- cancelled (superseded among them), active (open, not paused), paused.
- overdue: open timers whose next_fire_at has come (a warning, the due time,
  a step or a retry the firing path has not recorded yet), and the oldest.
- time to complete (completed_at - started_at, wall clock, pauses included):
  p50 and p90 by nearest rank over bins exact to 100 s and of two significant
  digits above (a bin's upper bound is reported, so "completed within").
- escalations: step rows by step and outcome (each repeat counts).
- warnings: warning rows by threshold and outcome (SENT or SKIPPED).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Connection, Engine

from .sql import Queries

SQL = Queries("reports.sql")

# Events read per fold statement: bounds one transaction's work after a long pause.
FOLD_BATCH = 10_000
STEP_OUTCOMES = ("SUCCESS", "FAILED", "SKIPPED")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)
WARNING_OUTCOMES = ("SENT", "SKIPPED")


def fold(conn: Connection, tenant_id: UUID, batch: int = FOLD_BATCH) -> int:
    """Fold the tenant's closes of up to ``batch`` events past its position, and
    its step and warning rows written since (one transaction: the caller's);
    the number of events and rows read."""
    params = {"tenant": tenant_id, "batch": batch}
    # Create and lock the position; its values go in as parameters.
    positions = conn.execute(SQL.stats_position.text, params).one()._mapping
    return conn.execute(SQL.fold_stats.text, {**params, **positions}).one().events


def fold_tenant(engine: Engine, tenant_id: UUID, batch: int = FOLD_BATCH) -> int:
    """Fold all of a tenant's closes and rows so far, a batch of events per
    transaction; the events and rows read."""
    total = 0
    while True:
        with engine.begin() as conn:
            n = fold(conn, tenant_id, batch)
        total += n
        if n < batch:
            return total


def fold_all(engine: Engine, batch: int = FOLD_BATCH) -> int:
    """Fold every tenant (``engine`` sees every tenant); the events and rows read."""
    with engine.connect() as conn:
        tenants = [r.id for r in conn.execute(SQL.stats_tenants.text)]
    return sum(fold_tenant(engine, t, batch) for t in tenants)


def rebuild(conn: Connection, tenant_id: UUID) -> None:
    """Fold the tenant's closed timers and its rows from the tables themselves,
    afresh: for timers written without events (a bulk load), or a repair."""
    params = {"tenant": tenant_id}
    conn.execute(SQL.stats_position.text, params)
    conn.execute(SQL.clear_stats.text, params)
    conn.execute(SQL.rebuild_stats.text, params)


def _nearest_rank(bins: Mapping[int, int], fraction: float) -> int | None:
    total = sum(bins.values())
    if total == 0:
        return None
    rank, seen = math.ceil(fraction * total), 0
    for value in sorted(bins):
        seen += bins[value]
        if seen >= rank:
            return value
    return None  # unreachable: seen ends at total


def compute(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The stats from the statement's (kind, key, outcome, n, at) rows."""
    plain: dict[str, int] = defaultdict(int)
    ttc: dict[int, int] = defaultdict(int)
    steps: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(STEP_OUTCOMES, 0))
    warnings: dict[int, dict[str, int]] = defaultdict(lambda: dict.fromkeys(WARNING_OUTCOMES, 0))
    at: dict[str, datetime | None] = {}
    for r in rows:
        kind, n = r["kind"], int(r["n"] or 0)
        if kind == "ttc":
            ttc[r["key"]] += n
        elif kind == "step":
            steps[r["key"]][r["outcome"]] += n
        elif kind == "warning":
            warnings[r["key"]][r["outcome"]] += n
        else:
            plain[kind] += n
            if r["at"] is not None:
                at[kind] = r["at"]
    within, late = plain["completed_within"], plain["completed_late"]
    breached = late + plain["open_breached"]
    now = at["now"]
    oldest = at.get("overdue")
    return {
        "as_of": now,
        "started": within + late + plain["cancelled"] + plain["active"] + plain["paused"],
        "completed_within_sla": within,
        "completed_late": late,
        "open_breached": plain["open_breached"],
        "breached": breached,
        "compliance_percent": (
            None if within + breached == 0 else round(100 * within / (within + breached), 2)
        ),
        "cancelled": plain["cancelled"],
        "superseded": plain["superseded"],
        "active": plain["active"],
        "paused": plain["paused"],
        "overdue": {
            "count": plain["overdue"],
            "oldest_fire_at": oldest,
            "oldest_age_seconds": None
            if oldest is None
            else round((now - oldest).total_seconds(), 3),
        },
        "time_to_complete_seconds": {
            "completed": sum(ttc.values()),
            "p50": _nearest_rank(ttc, 0.5),
            "p90": _nearest_rank(ttc, 0.9),
        },
        "escalations": [
            {"step": step, **{o.lower(): n for o, n in outcomes.items()}}
            for step, outcomes in sorted(steps.items())
        ],
        "warnings": {
            "sent": sum(w["SENT"] for w in warnings.values()),
            "skipped": sum(w["SKIPPED"] for w in warnings.values()),
            "by_threshold": [
                {"threshold": t, **{o.lower(): n for o, n in outcomes.items()}}
                for t, outcomes in sorted(warnings.items())
            ],
        },
    }


def _ceil(at: datetime, unit: timedelta) -> datetime:
    floor = _floor(at, unit)
    try:
        return floor if floor == at else floor + unit
    except OverflowError:  # the last hour of year 9999: no whole unit after it
        return datetime.max.replace(tzinfo=UTC)


def _floor(at: datetime, unit: timedelta) -> datetime:
    at = at.astimezone(UTC)
    return at - (at - EPOCH) % unit


def split(start: datetime, end: datetime) -> dict[str, datetime]:
    """The parts of [start, end) the stats read differently: whole UTC days
    [df, dt) and whole hours [hf, df) and [dt, ht) from the rollup, and the
    minutes [start, hf) and [ht, end) from the timers. Without a whole hour
    (or day), the hours (or days) are empty and the rest is counted finer."""
    hf, ht = _ceil(start, HOUR), _floor(end, HOUR)
    if hf >= ht:
        hf = ht = end
    df, dt = _ceil(hf, DAY), _floor(ht, DAY)
    if df >= dt:
        df = dt = ht
    return {"hf": hf, "ht": ht, "df": df, "dt": dt}


def stats(
    conn: Connection,
    tenant_id: UUID,
    start: datetime,
    end: datetime,
    contract: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The figures of the tenant's timers started in [start, end), of one
    contract if given; ``now`` (tests) is the instant open timers are judged at.

    ``conn`` is in a REPEATABLE READ transaction: the fold positions are read
    first, and the rollup they describe must come from the same snapshot, or
    a fold committing in between would count its work twice."""
    if conn.get_isolation_level() not in ("REPEATABLE READ", "SERIALIZABLE"):
        raise ValueError("stats() needs a REPEATABLE READ transaction")
    params = {"tenant": tenant_id}
    positions = conn.execute(SQL.stats_positions_of.text, params).one()._mapping
    params |= {"from": start, "to": end, "contract": contract, "now": now, **positions}
    rows = conn.execute(SQL.stats.text, params | split(start, end))
    return compute(r._mapping for r in rows)
