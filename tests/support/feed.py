"""Helpers for the pull feed's tests: writing outbox events straight through
the repository, waiting for the feed's horizon, and reading GET /v1/events
page by page.

The feed serves an event once every transaction older than its own has ended,
on the whole PostgreSQL server: other sessions (other test runs on a shared
server) can hold it back for a while. ``settle`` waits for that, so a test that
expects an event to be served asks only once it must be.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from sqlalchemy import Connection, text

from models.outbox import insert_events
from models.sla import utcnow
from tests.support.common import wait_until

DUE = "sla.timer.due"
SETTLE_S = 30.0


def event_row(tenant_id: UUID, event_type: str = DUE, **payload: Any) -> dict[str, Any]:
    """An outbox row of its own (a fresh idempotency key)."""
    return {
        "tenant_id": tenant_id,
        "timer_id": None,
        "event_type": event_type,
        "payload": {"type": event_type, **payload},
        "correlation_id": f"corr-{uuid4()}",
        "idempotency_key": f"feed-test:{uuid4()}",
        "created_at": utcnow(),
    }


def write_events(conn: Connection, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` in ``conn``'s transaction; their outbox ids, in order."""
    insert_events(conn, rows)
    found = dict(
        conn.execute(
            text(
                "SELECT idempotency_key, id FROM outbox_events "
                "WHERE idempotency_key = ANY(CAST(:keys AS text[]))"
            ),
            {"keys": [r["idempotency_key"] for r in rows]},
        ).all()
    )
    return [found[r["idempotency_key"]] for r in rows]


def settle(engine, timeout: float = SETTLE_S) -> None:
    """Wait until every transaction that wrote an event so far has ended, so
    the feed serves every committed event."""
    horizon_passed = text(
        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
        " > coalesce((SELECT max(txid) FROM outbox_events), 0)"
    )

    def passed() -> bool:
        with engine.connect() as conn:
            return conn.execute(horizon_passed).scalar_one()

    wait_until(passed, timeout, "the feed's horizon to pass every event written")


def ids_of(items: list[dict[str, Any]]) -> list[int]:
    return [int(item["id"].removeprefix("evt_")) for item in items]


def page(api, **params: Any) -> tuple[list[dict[str, Any]], str]:
    """One page of the feed: (items, next_cursor)."""
    response = api.get("/v1/events", query_string={k: v for k, v in params.items() if v})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"items", "next_cursor"}
    return body["items"], body["next_cursor"]


def read_to_end(api, after: str | None = None, **params: Any) -> tuple[list[dict[str, Any]], str]:
    """Every item from ``after`` on, page by page, and the cursor at the end."""
    items: list[dict[str, Any]] = []
    while True:
        got, after = page(api, after=after, **params)
        if not got:
            return items, after
        items += got
