"""The pull feed, GET /v1/events, on the real database: every event once, in
order, in the webhooks' envelope; type filters, the start at the end, tenant
isolation, the visibility lag an open transaction causes, and bad input.
The feed under concurrent writers is tests/integration/test_feed_concurrency.py."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from models import feed
from models.envelope import envelope
from models.schema import EVENT_TYPES
from tests.support.api import assert_problem
from tests.support.feed import event_row, ids_of, page, read_to_end, settle, write_events
from web.cursors import decode_feed_cursor, encode_cursor, encode_feed_cursor

STARTED, DUE, STEP = "sla.timer.started", "sla.timer.due", "sla.escalation.triggered"


def _rows(engine, ids: list[int]) -> dict[int, dict]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM outbox_events WHERE id = ANY(:ids)"), {"ids": ids})
        return {r.id: dict(r._mapping) for r in rows}


def test_the_feed_pages_through_every_event_once_in_order(api, engine, tenant):
    written = []
    for n in range(5):  # five transactions of up to four events
        with engine.begin() as conn:
            types = [STARTED, DUE, STEP, DUE][: n % 4 + 1]
            written += write_events(conn, [event_row(tenant[0], t, n=n) for t in types])

    settle(engine)
    items, cursor = read_to_end(api, limit=3)

    assert ids_of(items) == written  # one transaction after another, each in id order
    rows = _rows(engine, written)
    assert items == [json.loads(json.dumps(envelope(rows[i]))) for i in written]
    assert items[0]["data"] == {"tenant_id": str(tenant[0]), "n": 0}
    # The end holds: polling again gives nothing, and the same cursor back (an
    # unchanged cursor says: nothing to read yet).
    assert page(api, after=cursor) == ([], cursor)
    # A later event follows that cursor, and only it.
    with engine.begin() as conn:
        later = write_events(conn, [event_row(tenant[0], n=99)])
    settle(engine)
    assert ids_of(page(api, after=cursor)[0]) == later


def test_one_transactions_events_share_a_txid_and_keep_their_id_order(engine, tenant):
    with engine.begin() as conn:
        ids = write_events(conn, [event_row(tenant[0], n=n) for n in range(3)])
    settle(engine)
    rows = _rows(engine, ids)
    assert len({rows[i]["txid"] for i in ids}) == 1
    with engine.begin() as conn:
        assert [e["id"] for e in feed.read_page(conn, tenant[0], feed.START, 10).events] == ids


def test_a_page_is_at_most_limit_long_and_limit_defaults_to_100(api, engine, tenant):
    with engine.begin() as conn:
        written = write_events(conn, [event_row(tenant[0], n=n) for n in range(105)])
    settle(engine)
    items, cursor = page(api)
    assert ids_of(items) == written[:100]
    items, _ = page(api, after=cursor, limit=1)
    assert ids_of(items) == [written[100]]


def test_a_type_filter_serves_only_those_types_and_moves_past_the_rest(api, engine, tenant):
    with engine.begin() as conn:
        ids = write_events(conn, [event_row(tenant[0], t) for t in (STARTED, DUE, STEP, DUE)])
    settle(engine)
    items, cursor = read_to_end(api, type=f"{DUE},{STEP}", limit=2)
    assert ids_of(items) == ids[1:]
    assert {i["type"] for i in items} == {DUE, STEP}
    assert page(api, after=cursor) == ([], cursor)
    items, cursor = read_to_end(api, type=STARTED)
    assert ids_of(items) == ids[:1]
    # The cursor moved past the events the filter left out, and stays there.
    assert decode_feed_cursor(cursor)[1] == ids[-1]
    assert page(api, after=cursor, type=STARTED) == ([], cursor)


def test_a_sparse_type_filter_answers_after_a_bounded_scan(api, engine, tenant, monkeypatch):
    monkeypatch.setattr(feed, "SCAN_ROWS", 4)
    with engine.begin() as conn:
        ids = write_events(conn, [event_row(tenant[0], DUE) for _ in range(10)])
        ids += write_events(conn, [event_row(tenant[0], STEP)])
    settle(engine)

    cursors, found, after = [], [], None
    for _ in range(4):
        items, after = page(api, after=after, type=STEP, limit=2)
        found += ids_of(items)
        cursors.append(decode_feed_cursor(after))
    # 4 then 4 events read without a match, each page moving the cursor to the
    # last one read; then the last 3 with the match; then nothing new.
    assert found == [ids[-1]]
    assert [c[1] for c in cursors] == [ids[3], ids[7], ids[10], ids[10]]


def test_latest_starts_at_the_end(api, engine, tenant):
    with engine.begin() as conn:
        earlier = write_events(conn, [event_row(tenant[0]) for _ in range(3)])
    settle(engine)  # else "latest" may still lie before them: they would follow it
    assert ids_of(read_to_end(api)[0]) == earlier
    items, cursor = page(api, after="latest")
    assert items == []
    with engine.begin() as conn:
        later = write_events(conn, [event_row(tenant[0])])
    settle(engine)
    assert ids_of(read_to_end(api, after=cursor)[0]) == later


def test_aborted_transactions_events_never_appear(api, engine, tenant):
    with engine.connect() as conn, conn.begin() as txn:
        write_events(conn, [event_row(tenant[0], n="aborted")])
        txn.rollback()
    with engine.begin() as conn:
        kept = write_events(conn, [event_row(tenant[0], n="kept")])
    settle(engine)
    assert ids_of(read_to_end(api)[0]) == kept


def test_an_open_older_transaction_holds_back_later_events_until_it_ends(
    api, engine, tenant, other_tenant
):
    """The price of never skipping: a transaction that has written (here, another
    tenant's event) and stays open delays every event committed after it began."""
    with engine.begin() as conn:
        before = write_events(conn, [event_row(tenant[0], n="before")])
    settle(engine)
    items, cursor = read_to_end(api)
    assert ids_of(items) == before

    with engine.connect() as blocker:
        txn = blocker.begin()
        write_events(blocker, [event_row(other_tenant[0], n="theirs, open")])
        with engine.begin() as conn:
            held = write_events(conn, [event_row(tenant[0], n="committed behind it")])
        assert page(api, after=cursor)[0] == []  # committed, not yet served
        txn.rollback()
    settle(engine)
    assert ids_of(page(api, after=cursor)[0]) == held


def test_another_tenants_events_never_appear(api, other_api, engine, tenant, other_tenant):
    with engine.begin() as conn:
        mine = write_events(conn, [event_row(tenant[0], n=n) for n in range(3)])
    with engine.begin() as conn:
        theirs = write_events(conn, [event_row(other_tenant[0], n=n) for n in range(3)])
    with engine.begin() as conn:
        mine += write_events(conn, [event_row(tenant[0], n=3)])

    settle(engine)
    items, my_end = read_to_end(api, limit=2)
    assert ids_of(items) == mine
    assert {i["data"]["tenant_id"] for i in items} == {str(tenant[0])}
    their_items, _ = read_to_end(other_api)
    assert ids_of(their_items) == theirs

    # A cursor is a position, not a tenant: another tenant's cursor reads the
    # caller's own events after that position, never the other tenant's.
    their_first = page(other_api, limit=1)[1]
    assert ids_of(read_to_end(api, after=their_first)[0]) == mine[3:]
    assert ids_of(read_to_end(other_api, after=my_end)[0]) == []


def test_the_page_query_reads_the_tenant_txid_index(app, engine, tenant, other_tenant):
    """As the API's role, in a tenant's scope: both ranges (the bound and the page)
    come from ix_outbox_events_tenant_txid, and the page's upper end is an index
    condition, so a sparse type filter stops at the bound instead of reading on."""
    with engine.begin() as conn:
        for owner in (tenant[0], other_tenant[0]):
            write_events(conn, [event_row(owner, n=n) for n in range(3000)])
        conn.exec_driver_sql("SET LOCAL ROLE NONE")
        conn.exec_driver_sql("ANALYZE outbox_events")
    from models.db import tenant_scope

    params = {"tenant_id": tenant[0], "after_txid": 0, "after_id": 100, "limit": 100}
    for types, scan in ((None, 100), ([DUE], feed.SCAN_ROWS)):
        with tenant_scope(app.extensions["sla"].engine, tenant[0]) as conn:
            plan = conn.execute(
                text("EXPLAIN (FORMAT JSON) " + feed.SQL.page.sql),
                {**params, "types": types, "scan": scan},
            ).scalar_one()
        nodes = _nodes(plan[0]["Plan"])
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], plan
        assert {n["Index Name"] for n in nodes if "Index Name" in n} == {
            "ix_outbox_events_tenant_txid"
        }
        conditions = [n.get("Index Cond", "") for n in nodes]
        assert any("ROW(txid, id) >" in c and "ROW(txid, id) <=" in c for c in conditions), plan


def _nodes(node: dict) -> list[dict]:
    return [node] + [n for child in node.get("Plans", ()) for n in _nodes(child)]


# -- bad input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "after",
    [
        "garbage",
        "x" * 28,
        "!" * 28,
        "AQAAAAAAAAB7f_________-2BrJd",  # one character changed
        "",
        "x" * 101,
    ],
)
def test_a_cursor_the_feed_did_not_hand_out_is_422_naming_after(api, tenant, after):
    assert_problem(api.get("/v1/events", query_string={"after": after}), 422, "after")


def test_a_tampered_or_foreign_kind_of_cursor_is_422(api, tenant):
    from datetime import UTC, datetime
    from uuid import UUID

    good = encode_feed_cursor((123, 456))
    assert decode_feed_cursor(good) == (123, 456)
    assert page(api, after=good)[0] == []
    flipped = good[:5] + ("B" if good[5] != "B" else "C") + good[6:]
    timers_cursor = encode_cursor(datetime(2025, 1, 1, tzinfo=UTC), UUID(int=1))
    for bad in (flipped, timers_cursor, good + "A", good[:-1]):
        assert_problem(api.get("/v1/events", query_string={"after": bad}), 422, "after")


@pytest.mark.parametrize("limit", ["0", "1001", "-1", "x", "1.5", ""])
def test_a_limit_outside_1_to_1000_is_422_naming_limit(api, tenant, limit):
    assert_problem(api.get("/v1/events", query_string={"limit": limit}), 422, "limit")


@pytest.mark.parametrize("types", ["sla.timer.nope", f"{DUE},nope", f"{DUE},", ""])
def test_an_unknown_type_is_422_listing_the_accepted_types(api, tenant, types):
    body = assert_problem(api.get("/v1/events", query_string={"type": types}), 422, "type")
    reason = next(e["reason"] for e in body["errors"] if e["field"] == "type")
    assert all(t in reason for t in EVENT_TYPES), reason


def test_a_repeated_parameter_is_422(api, tenant):
    response = api.get(f"/v1/events?type={DUE}&type={STEP}")
    assert_problem(response, 422, "type")


def test_the_feed_needs_a_tenant_key(app, tenant):
    assert_problem(app.test_client().get("/v1/events"), 401)


def test_the_document_describes_the_feed(app):
    doc = app.test_client().get("/openapi.json").get_json()
    entry = doc["paths"]["/v1/events"]["get"]
    params = {p["name"]: p for p in entry["parameters"]}
    assert set(params) == {"after", "limit", "type"}
    assert params["limit"]["schema"]["maximum"] == 1000
    assert "pattern" in params["type"]["schema"]
    assert entry["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EventPage"
    }
    assert {"items", "next_cursor"} == set(doc["components"]["schemas"]["EventPage"]["required"])
