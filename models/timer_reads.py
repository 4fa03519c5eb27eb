"""Reading a tenant's timers: one by id, a keyset-paginated page, and the
step rows of several at once (models/sql/timers.sql). Read-only: starting and
closing are models/timers.py's."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from .sql import Queries

SQL = Queries("timers.sql")


def get_timer(conn: Connection, tenant_id: UUID, timer_id: UUID) -> dict[str, Any] | None:
    row = conn.execute(SQL.timer_by_id.text, {"tenant": tenant_id, "id": timer_id}).mappings()
    found = row.first()
    return dict(found) if found is not None else None


def escalations_for(
    conn: Connection, tenant_id: UUID, timer_ids: Sequence[UUID]
) -> dict[UUID, list[dict]]:
    """Step rows for several of a tenant's timers in one query, in step order."""
    found: dict[UUID, list[dict]] = {t: [] for t in timer_ids}
    if timer_ids:
        rows = conn.execute(
            SQL.escalations_for.text, {"tenant": tenant_id, "ids": list(timer_ids)}
        ).mappings()
        for r in rows:
            found[r["timer_id"]].append(dict(r))
    return found


def list_timers(
    conn: Connection,
    tenant_id: UUID,
    *,
    lead_id: str | None,
    status: str | None,
    limit: int,
    after: tuple[datetime, UUID] | None,
    processing_status: str | None = None,
) -> tuple[list[dict[str, Any]], bool]:
    """Newest first, keyset-paginated on (created_at, id): the page after the
    position ``after`` (None: the first page), and whether more follow."""
    rows = (
        conn.execute(
            SQL.list_timers.text,
            {
                "tenant": tenant_id,
                "lead": lead_id,
                "status": status,
                "processing": processing_status,
                "c_at": after[0] if after else None,
                "c_id": after[1] if after else None,
                "limit": limit + 1,
            },
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows[:limit]], len(rows) > limit
