"""Every tenant's live counts for the admin (GET /v1/admin/stats, the ops page).

A tenant's counts are the compliance stats' own figures (models/stats.py), so
the admin and the tenant read the same numbers:

- active, paused and overdue: over every timer the tenant ever started (open
  timers are counted as of now, however long ago they started);
- breached today and compliance today: over the timers started since 00:00 UTC.

It reads through the maintenance engine, the one role whose row-level
security shows every tenant, in one REPEATABLE READ transaction (stats() needs
it, and the page is then one consistent snapshot). The cost is two stats reads
per tenant, so a page holds a bounded number of tenants.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Engine

from . import stats as stats_sql
from .sql import Queries

SQL = Queries("overview.sql")

# The earliest start the "ever" range covers; timers do not start before it.
EVER = datetime(1970, 1, 1, tzinfo=UTC)
# Past now: a start recorded in this instant's last microseconds still counts.
AHEAD = timedelta(days=1)


def start_of_day(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def tenant_counts(
    engine: Engine,
    limit: int,
    after: tuple[str, UUID] | None = None,
    now: datetime | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Up to ``limit`` tenants by name after ``after`` (name, id), each with its
    counts, and whether more tenants follow. ``engine`` sees every tenant."""
    now = now or datetime.now(UTC)
    today = start_of_day(now)
    rows = []
    with engine.execution_options(isolation_level="REPEATABLE READ").begin() as conn:
        tenants = conn.execute(
            SQL.tenants_page.text,
            {
                "name": after[0] if after else None,
                "id": after[1] if after else None,
                "limit": limit + 1,
            },
        ).all()
        for tenant in tenants[:limit]:
            ever = stats_sql.stats(conn, tenant.id, EVER, now + AHEAD, now=now)
            day = stats_sql.stats(conn, tenant.id, today, now + AHEAD, now=now)
            rows.append(
                {
                    "tenant_id": tenant.id,
                    "name": tenant.name,
                    "active": ever["active"],
                    "paused": ever["paused"],
                    "overdue": ever["overdue"]["count"],
                    "oldest_overdue_age_seconds": ever["overdue"]["oldest_age_seconds"],
                    "started_today": day["started"],
                    "breached_today": day["breached"],
                    "compliance_percent_today": day["compliance_percent"],
                }
            )
    return rows, len(tenants) > limit
