"""Webhook subscriptions, the API side (models/sql/webhooks.sql): create, read,
change, delete and rotate subscriptions; list a subscription's deliveries and
their attempts; retry one delivery; replay a window of events.

Functions take a SQLAlchemy ``Connection`` scoped to the tenant and leave the
transaction to the caller. Sending is tasks/delivery.py's: these functions only
arm deliveries (PENDING, due now), and the caller wakes delivery after commit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from .sql import Queries

SQL = Queries("webhooks.sql")

# The fields PATCH may change.
CHANGEABLE = ("url", "event_types", "description", "enabled")


class ReplayTooLarge(Exception):
    """The replay window holds more events than one request may arm."""

    def __init__(self, cap: int) -> None:
        super().__init__(f"more than {cap} events")
        self.cap = cap


def _one(conn: Connection, query, params: Mapping[str, Any]) -> dict[str, Any] | None:
    row = conn.execute(query.text, dict(params)).mappings().first()
    return None if row is None else dict(row)


def create_subscription(
    conn: Connection,
    tenant_id: UUID,
    *,
    url: str,
    event_types: Sequence[str] | None,
    description: str | None,
    secret: str,
) -> dict[str, Any]:
    row = _one(
        conn,
        SQL.create_subscription,
        {
            "tenant": tenant_id,
            "url": url,
            "event_types": None if event_types is None else list(event_types),
            "description": description,
            "secret": secret,
        },
    )
    assert row is not None
    return row


def get_subscription(conn: Connection, tenant_id: UUID, sub_id: UUID) -> dict[str, Any] | None:
    return _one(conn, SQL.subscription_by_id, {"tenant": tenant_id, "id": sub_id})


def lock_subscription(conn: Connection, tenant_id: UUID, sub_id: UUID) -> dict[str, Any] | None:
    return _one(conn, SQL.lock_subscription, {"tenant": tenant_id, "id": sub_id})


def list_subscriptions(
    conn: Connection, tenant_id: UUID, *, limit: int, after: tuple[datetime, UUID] | None
) -> tuple[list[dict[str, Any]], bool]:
    """Newest first: the page after the position ``after`` (None: the first
    page), and whether more follow."""
    rows = (
        conn.execute(
            SQL.list_subscriptions.text,
            {
                "tenant": tenant_id,
                "c_at": after[0] if after else None,
                "c_id": after[1] if after else None,
                "limit": limit + 1,
            },
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows[:limit]], len(rows) > limit


def update_subscription(
    conn: Connection, tenant_id: UUID, sub_id: UUID, changes: Mapping[str, Any]
) -> dict[str, Any] | None:
    """Set the fields named in ``changes`` (keys of CHANGEABLE; event_types and
    description may be None); None if the tenant has no such subscription."""
    unknown = set(changes) - set(CHANGEABLE)
    if unknown:
        raise ValueError(f"not changeable: {sorted(unknown)}")
    params: dict[str, Any] = {"tenant": tenant_id, "id": sub_id}
    for name in CHANGEABLE:
        params[f"set_{name}"] = name in changes
        params[name] = changes.get(name)
    if params["event_types"] is not None:
        params["event_types"] = list(params["event_types"])
    return _one(conn, SQL.update_subscription, params)


def delete_subscription(conn: Connection, tenant_id: UUID, sub_id: UUID) -> bool:
    return _one(conn, SQL.delete_subscription, {"tenant": tenant_id, "id": sub_id}) is not None


def rotate_secret(
    conn: Connection, tenant_id: UUID, sub_id: UUID, secret: str, grace_seconds: int
) -> tuple[bool, datetime | None]:
    """Make ``secret`` the signing secret; the current one keeps signing for
    ``grace_seconds`` (0: revoked now). Returns (found, when the previous
    secret stops signing)."""
    row = _one(
        conn,
        SQL.rotate_secret,
        {"tenant": tenant_id, "id": sub_id, "secret": secret, "grace": grace_seconds},
    )
    if row is None:
        return False, None
    return True, row["previous_secret_expires_at"]


def list_deliveries(
    conn: Connection,
    tenant_id: UUID,
    sub_id: UUID,
    *,
    status: str | None,
    limit: int,
    after: int | None,
) -> tuple[list[dict[str, Any]], bool]:
    """A subscription's deliveries, newest first (by id), after the delivery
    id ``after``; and whether more follow."""
    rows = (
        conn.execute(
            SQL.list_deliveries.text,
            {
                "tenant": tenant_id,
                "subscription": sub_id,
                "status": status,
                "after": after,
                "limit": limit + 1,
            },
        )
        .mappings()
        .all()
    )
    return [dict(r) for r in rows[:limit]], len(rows) > limit


def get_delivery(
    conn: Connection, tenant_id: UUID, sub_id: UUID, delivery_id: int
) -> dict[str, Any] | None:
    """A delivery with its attempts as ``attempts_log``, oldest first; None if there is none."""
    row = _one(
        conn,
        SQL.delivery_by_id,
        {"tenant": tenant_id, "subscription": sub_id, "id": delivery_id},
    )
    if row is None:
        return None
    attempts = conn.execute(
        SQL.attempts_of.text, {"tenant": tenant_id, "delivery": delivery_id}
    ).mappings()
    return {**row, "attempts_log": [dict(a) for a in attempts]}


def retry_delivery(conn: Connection, tenant_id: UUID, sub_id: UUID, delivery_id: int) -> bool:
    """Make one delivery due now (see the statement); False if there is none."""
    params = {"tenant": tenant_id, "subscription": sub_id, "id": delivery_id}
    return _one(conn, SQL.retry_delivery, params) is not None


def replay(
    conn: Connection,
    tenant_id: UUID,
    subscription: Mapping[str, Any],
    *,
    since: datetime,
    until: datetime | None,
    event_types: Sequence[str] | None,
    cap: int,
) -> int:
    """Arm a delivery to ``subscription`` of each of the tenant's events created
    in [since, until) whose type both the subscription and ``event_types``
    (None: any) take. Returns how many; ReplayTooLarge past ``cap`` events,
    with nothing armed."""
    params = {
        "tenant": tenant_id,
        "subscription": subscription["id"],
        "since": since,
        "until": until,
        "sub_types": subscription["event_types"],
        "types": None if event_types is None else list(event_types),
    }
    found = conn.execute(SQL.count_replay.text, {**params, "cap": cap + 1}).scalar_one()
    if found > cap:
        raise ReplayTooLarge(cap)
    return conn.execute(SQL.replay.text, params).rowcount
