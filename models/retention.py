"""Retention: finished data is deleted in bounded batches (models/sql/retention.sql).

- Outbox events created more than ``SLA_OUTBOX_RETENTION_DAYS`` ago (default
  14) go with their deliveries and attempts, once every delivery of them is
  DELIVERED and the stats fold has passed them.
- Timers closed (COMPLETED or CANCELLED) more than ``SLA_RETENTION_DAYS`` ago
  (default 90) go with their step and warning rows, once none of their events
  is left and their rows are folded.

Never deleted: open timers (ACTIVE, DUE, ESCALATED, PAUSED), dead-lettered
timers (processing FAILED) and claimed ones, events with a PENDING or FAILED
delivery, and anything of a tenant the stats fold has not reached. What the
fold has put in ``sla_stats_rollup`` stays there, so the stats of whole hours
and days do not change when their timers go; only the minutes at the very
ends of a range older than the retention, which are counted from the timers
themselves, lose the deleted ones (docs/reports.md).

Each batch is one short transaction over at most ``batch`` candidates in index
order, locking only the rows it deletes with SKIP LOCKED; ``pause`` seconds
between batches leave the database to the firing path. One run at a time
across every scheduler: an advisory lock, held by the run's own connection.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from uuid import UUID

from sqlalchemy import Engine, text

from .sql import Queries

SQL = Queries("retention.sql")
log = logging.getLogger(__name__)

# pg_try_advisory_lock key of a retention run ("sla-retention" as an int8).
LOCK_KEY = 0x736C612D7265746E
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NIL = UUID(int=0)


@dataclass
class RetentionReport:
    events: int = 0
    timers: int = 0
    batches: int = 0
    skipped: bool = False  # another run held the lock
    seconds: float = 0.0
    tenants: list[UUID] = field(default_factory=list)


def delete_events(
    engine: Engine, tenant: dict, cutoff: datetime, batch: int, pause: float, report
) -> None:
    after_txid, after_id = 0, 0
    while True:
        with engine.begin() as conn:
            row = conn.execute(
                SQL.delete_delivered_events.text,
                {**tenant, "cutoff": cutoff, "batch": batch,
                 "after_txid": after_txid, "after_id": after_id},
            ).one()  # fmt: skip
        report.events += row.deleted
        report.batches += 1
        if row.scanned < batch or row.old == 0:
            return
        after_txid, after_id = row.last_txid, row.last_id
        time.sleep(pause)


def delete_timers(
    engine: Engine, tenant: dict, cutoff: datetime, batch: int, pause: float, report
) -> None:
    after_started, after_id = EPOCH, NIL
    while True:
        with engine.begin() as conn:
            row = conn.execute(
                SQL.delete_finished_timers.text,
                {"tenant": tenant["tenant"], "rows_txid": tenant["rows_txid"], "cutoff": cutoff,
                 "batch": batch, "after_started": after_started, "after_id": after_id},
            ).one()  # fmt: skip
        report.timers += row.deleted
        report.batches += 1
        if row.scanned < batch:
            return
        after_started, after_id = row.last_started, row.last_id
        time.sleep(pause)


def run(
    engine: Engine,
    *,
    timer_days: int,
    event_days: int,
    batch: int = 1000,
    pause: float = 0.01,
    now: datetime | None = None,
) -> RetentionReport:
    """One retention pass over every tenant (``engine`` sees them all): events
    first, so the timers they held become eligible in the same pass."""
    started = time.monotonic()
    now = now or datetime.now(UTC)
    report = RetentionReport()
    with engine.connect() as lock:
        if not lock.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar():
            lock.rollback()
            report.skipped = True
            return report
        lock.commit()  # the session lock outlives the transaction; no snapshot is held
        try:
            with engine.connect() as conn:
                tenants = [
                    {"tenant": r.tenant_id, "pos_txid": r.pos_txid,
                     "pos_event_id": r.pos_event_id, "rows_txid": r.rows_txid}
                    for r in conn.execute(SQL.retention_tenants.text)
                ]  # fmt: skip
            for tenant in tenants:
                before = (report.events, report.timers)
                delete_events(
                    engine, tenant, now - timedelta(days=event_days), batch, pause, report
                )
                delete_timers(
                    engine, tenant, now - timedelta(days=timer_days), batch, pause, report
                )
                if (report.events, report.timers) != before:
                    report.tenants.append(tenant["tenant"])
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            lock.commit()
    report.seconds = time.monotonic() - started
    if report.events or report.timers:
        log.info(
            "retention: deleted %d events and %d timers of %d tenants in %d batches (%.1f s)",
            report.events,
            report.timers,
            len(report.tenants),
            report.batches,
            report.seconds,
        )
    return report
