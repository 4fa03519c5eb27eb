"""Starts that race a close of the lead's open timer, and starts on a host whose
clock is wrong: the database decides both."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from uuid import UUID

import pytest
from sqlalchemy import text

from models import timers as timer_sql
from models.sla import utcnow
from tests.support.api import assert_problem

BULK = "/v1/timers/bulk"


def _status(engine, timer_id: str) -> tuple[str, str | None]:
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT status, cancel_reason FROM sla_timers WHERE id = :id"), {"id": timer_id}
        ).one()
    return row.status, row.cancel_reason


def _open_timers(engine, lead_id: str) -> list[str]:
    with engine.connect() as conn:
        return [
            str(i)
            for i in conn.execute(
                text(
                    "SELECT id FROM sla_timers WHERE lead_id = :lead "
                    "AND status IN ('ACTIVE', 'DUE', 'ESCALATED')"
                ),
                {"lead": lead_id},
            ).scalars()
        ]


def _close_after_first_insert(monkeypatch, engine, tenant_id, timer_ids, verb):
    """Close ``timer_ids`` (committed, on another connection) right after the
    transactional start's first insert skipped them: the window in which a start
    used to find no open timer to supersede and answer 409."""
    real = timer_sql._insert_timers
    closed: list[str] = []

    def insert_then_close(*args, scope=False, **kwargs):
        created = real(*args, scope=scope, **kwargs)
        if not scope and not closed:
            with engine.begin() as conn:
                for timer_id in timer_ids:
                    timer_sql.finish_timer(
                        conn, tenant_id, timer_id, verb, utcnow(), "closed meanwhile"
                    )
            closed.extend(timer_ids)
        return created

    monkeypatch.setattr(timer_sql, "_insert_timers", insert_then_close)
    return closed


@pytest.mark.parametrize("verb", ["cancel", "complete"])
def test_a_start_racing_a_close_of_the_open_timer_starts_a_new_timer(
    api, engine, tenant, monkeypatch, verb
):
    old = api.start(lead_id="lead-race")
    closed = _close_after_first_insert(monkeypatch, engine, tenant[0], [old["id"]], verb)

    response = api.post("/v1/timers", {"lead_id": "lead-race", "window_seconds": 600})

    assert closed == [old["id"]], "the race was not injected"
    assert response.status_code == 201, response.get_json()
    new = response.get_json()
    assert new["id"] != old["id"] and new["status"] == "ACTIVE"
    # The close that won the race stands; nothing superseded the old timer.
    done = "CANCELLED" if verb == "cancel" else "COMPLETED"
    assert _status(engine, old["id"]) == (done, "closed meanwhile" if verb == "cancel" else None)
    assert _open_timers(engine, "lead-race") == [new["id"]]


def test_a_bulk_start_racing_a_close_starts_every_timer(api, engine, tenant, monkeypatch):
    raced = api.start(lead_id="lead-a")
    superseded = api.start(lead_id="lead-b")
    closed = _close_after_first_insert(monkeypatch, engine, tenant[0], [raced["id"]], "cancel")
    body = {"timers": [{"lead_id": f"lead-{x}", "window_seconds": 600} for x in "abc"]}

    response = api.post(BULK, body)

    assert closed == [raced["id"]], "the race was not injected"
    assert response.status_code == 201, response.get_json()
    items = response.get_json()["items"]
    assert [t["lead_id"] for t in items] == ["lead-a", "lead-b", "lead-c"]
    assert _status(engine, raced["id"]) == ("CANCELLED", "closed meanwhile")
    assert _status(engine, superseded["id"]) == ("CANCELLED", "superseded")
    for timer in items:
        assert _open_timers(engine, timer["lead_id"]) == [timer["id"]]


def test_a_repeated_start_is_still_a_conflict_after_a_close(api, engine, tenant, monkeypatch):
    # The same explicit started_at as a closed timer: no open timer to
    # supersede, and inserting again cannot help, so 409 (after bounded tries).
    body = {"lead_id": "lead-dup", "window_seconds": 600, "started_at": "2025-01-01T00:00:00Z"}
    first = api.post("/v1/timers", body).get_json()
    closed = _close_after_first_insert(monkeypatch, engine, tenant[0], [first["id"]], "cancel")

    problem = assert_problem(api.post("/v1/timers", body), 409)

    assert closed == [first["id"]]
    assert "already exists" in problem["detail"]
    assert _open_timers(engine, "lead-dup") == []


# --------------------------------------------------------------------------- clocks


def _database_now(engine) -> datetime:
    with engine.connect() as conn:
        return conn.execute(text("SELECT statement_timestamp()")).scalar_one()


def _skew(monkeypatch, by: timedelta) -> None:
    """Every clock of the web process is off by ``by``; the database's is not."""
    skewed = lambda: utcnow() + by  # noqa: E731 - the real clock, captured before patching
    import models.sla
    import web.timers

    monkeypatch.setattr(models.sla, "utcnow", skewed)
    # The routes read no clock of their own today; patched anyway, should one return.
    monkeypatch.setattr(web.timers, "utcnow", skewed, raising=False)


def _stored(engine, timer_id: str):
    with engine.connect() as conn:
        return conn.execute(
            text(
                "SELECT started_at, due_at, next_fire_at, created_at, "
                "       next_fire_at <= statement_timestamp() AS due_now "
                "FROM sla_timers WHERE id = :id"
            ),
            {"id": timer_id},
        ).one()


@pytest.mark.parametrize("skew", [timedelta(hours=1), timedelta(hours=-1)], ids=["ahead", "behind"])
@pytest.mark.parametrize("path", ["single", "single-superseding", "bulk"])
def test_the_database_clock_decides_a_default_start(api, engine, monkeypatch, skew, path):
    if path == "single-superseding":  # the transactional path, not the fast one
        api.start(lead_id="lead-clock")
    _skew(monkeypatch, skew)
    before = _database_now(engine)

    if path == "bulk":
        response = api.post(BULK, {"timers": [{"lead_id": "lead-clock", "window_seconds": 60}]})
        assert response.status_code == 201, response.get_json()
        timer = response.get_json()["items"][0]
    else:
        response = api.post("/v1/timers", {"lead_id": "lead-clock", "window_seconds": 60})
        assert response.status_code == 201, response.get_json()
        timer = response.get_json()

    after = _database_now(engine)
    row = _stored(engine, timer["id"])
    assert before <= row.started_at <= after
    assert before <= row.created_at <= after
    assert row.due_at == row.next_fire_at == row.started_at + timedelta(seconds=60)
    # Nothing is claimable before the window has passed on the database's clock.
    assert not row.due_now
    assert datetime.fromisoformat(timer["started_at"]) == row.started_at
    assert datetime.fromisoformat(timer["due_at"]) == row.due_at


@pytest.mark.parametrize("skew", [timedelta(hours=1), timedelta(hours=-1)], ids=["ahead", "behind"])
@pytest.mark.parametrize("route", ["timer", "lead"])
def test_the_database_clock_dates_a_close_and_judges_the_breach(
    api, engine, monkeypatch, skew, route
):
    api.contracts("other")
    completed = api.start(lead_id="lead-close", window_seconds=60)
    cancelled = api.start(lead_id="lead-close", sla_contract_id="other", window_seconds=60)
    _skew(monkeypatch, skew)
    before = _database_now(engine)
    if route == "timer":
        done = api.post(f"/v1/timers/{completed['id']}/complete", {})
        gone = api.post(f"/v1/timers/{cancelled['id']}/cancel", {"reason": "lost"})
    else:
        done = api.post("/v1/leads/lead-close/complete?sla_contract_id=default", {})
        gone = api.post("/v1/leads/lead-close/cancel?sla_contract_id=other", {"reason": "lost"})
    assert done.status_code == gone.status_code == 200, (done.get_json(), gone.get_json())
    after = _database_now(engine)
    with engine.connect() as conn:
        rows = {
            r.id: r
            for r in conn.execute(
                text(
                    "SELECT id, breached, completed_at, cancelled_at, updated_at "
                    "FROM sla_timers WHERE lead_id = 'lead-close'"
                )
            )
        }
        events = dict(
            conn.execute(
                text(
                    "SELECT event_type, created_at FROM outbox_events "
                    "WHERE event_type IN ('sla.timer.completed', 'sla.timer.cancelled')"
                )
            ).all()
        )
    done_row, gone_row = rows[UUID(completed["id"])], rows[UUID(cancelled["id"])]
    # Completed a minute before due by the database's clock: met, whatever the host says.
    assert done_row.breached is False
    assert before <= done_row.completed_at <= after
    assert before <= gone_row.cancelled_at <= after
    assert events == {
        "sla.timer.completed": done_row.completed_at,
        "sla.timer.cancelled": gone_row.cancelled_at,
    }


def test_the_started_event_carries_the_stored_times(api, engine, monkeypatch):
    _skew(monkeypatch, timedelta(hours=-1))
    timer = api.start(lead_id="lead-event", window_seconds=60)
    with engine.connect() as conn:
        event = conn.execute(
            text(
                "SELECT payload, created_at FROM outbox_events "
                "WHERE timer_id = :id AND event_type = 'sla.timer.started'"
            ),
            {"id": timer["id"]},
        ).one()
    row = _stored(engine, timer["id"])
    assert datetime.fromisoformat(event.payload["started_at"]) == row.started_at
    assert datetime.fromisoformat(event.payload["due_at"]) == row.due_at
    assert datetime.fromisoformat(event.payload["occurred_at"]) == row.created_at
    assert event.created_at == row.created_at


def test_an_idempotent_replay_of_a_default_start_returns_the_stored_timer(api):
    # The fingerprint covers the request body, never the time the server chose.
    body = {"lead_id": "lead-replay", "window_seconds": 60}
    headers = {"Idempotency-Key": "clock-replay"}
    first = api.post("/v1/timers", body, headers=headers)
    again = api.post("/v1/timers", body, headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["started_at"] == first.get_json()["started_at"]
    assert again.get_json()["id"] == first.get_json()["id"]


def test_timer_ids_are_time_ordered(api):
    # UUIDv7: a start inserts at the right edge of the id indexes (P7's start
    # cost stays flat at 10M timers), single or bulk, and ids sort by start.
    first = UUID(api.start(lead_id="lead-v7-a", window_seconds=60)["id"])
    time.sleep(0.002)  # the order is the millisecond's
    bulk = api.post(
        BULK,
        {"timers": [{"lead_id": f"lead-v7-{i}", "window_seconds": 60} for i in range(3)]},
    )
    assert bulk.status_code == 201, bulk.get_json()
    later = [UUID(t["id"]) for t in bulk.get_json()["items"]]
    assert {u.version for u in [first, *later]} == {7}
    assert all(first < u for u in later)
