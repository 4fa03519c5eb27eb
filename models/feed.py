"""The pull feed's order and pages (models/sql/feed.sql).

A position in the feed is ``(txid, id)``: the id of the transaction that wrote
an event (``outbox_events.txid``, ``pg_current_xact_id()``) and the event's
identity. Events are read in that order, and only those whose ``txid`` is
below the reading snapshot's xmin, the *horizon*.

Why no event is ever skipped: an identity value is taken when a row is
inserted, not when its transaction commits, so a reader that keeps "the last
id seen" misses a lower id committed after a higher one. Here, every
transaction whose id is below the horizon has ended (committed or aborted)
when the page is read, and all of them are visible to the page's snapshot;
any transaction that commits later has an id at or above that horizon, so
its events sort after every position a page has handed out.

- Aborted transactions' events are never visible: never served, nothing to skip.
- The page is one statement, so its horizon and its rows share one snapshot.
- The price: an event is served only once every transaction older than its own
  has ended. A transaction that holds an id (one that has written anything,
  in any database of the server) and stays open delays the feed until it ends.
- Events written before migration 0005 share the migration's txid and sort by id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from sqlalchemy import Connection

from .sql import Queries

SQL = Queries("feed.sql")

Position = tuple[int, int]  # (txid, id)

MAX_ID = 2**63 - 1  # bigint: a position past every id of a transaction
START: Position = (0, 0)  # before every event
# A type filter reads at most this many events past the position per page.
SCAN_ROWS = 10_000


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]  # outbox rows, in feed order
    next: Position  # where the next page starts


def latest(conn: Connection) -> Position:
    """The current end of the feed, just past every event below the horizon:
    only events not yet served can follow it."""
    return (conn.execute(SQL.horizon.text).scalar_one() - 1, MAX_ID)


def read_page(
    conn: Connection,
    tenant_id: UUID,
    after: Position,
    limit: int,
    types: Sequence[str] | None = None,
) -> Page:
    """Up to ``limit`` of the tenant's events after ``after`` (of ``types`` only,
    if given), and the position to read on from.

    A page reads at most ``SCAN_ROWS`` events past ``after`` (``limit`` without
    a type filter). The next position is the last event's when the page is
    full; else the last event read, whatever its type, so the cursor moves past
    what a filter leaves out; else, nothing new below the horizon, ``after``
    itself. A consumer whose cursor came back unchanged has nothing to read yet.
    """
    scan = limit if types is None else max(limit, SCAN_ROWS)
    rows = conn.execute(
        SQL.page.text,
        {
            "tenant_id": tenant_id,
            "after_txid": after[0],
            "after_id": after[1],
            "types": None if types is None else list(types),
            "scan": scan,
            "limit": limit,
        },
    ).all()
    events = [dict(r._mapping) for r in rows if r.id is not None]
    if len(events) == limit:
        return Page(events, (events[-1]["txid"], events[-1]["id"]))
    if rows[0].last_id is not None:
        return Page(events, (rows[0].last_txid, rows[0].last_id))
    return Page(events, after)
