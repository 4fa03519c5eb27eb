"""Concurrent single starts of one tenant, through the route and the real
statement (web/start_groups.py): the starts that arrive while one is in flight
commit together in the next statement, and each still answers as it would
alone (a supersede, a replay, a bad row).

The start in flight is held in PostgreSQL by the advisory lock its statement
takes for its (tenant, lead, contract) pair, taken first by the test."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

import psycopg
from sqlalchemy import text

from models import timers as timer_sql
from tests.support.api import Api
from web.services import services


@contextmanager
def _pair_held(engine, tenant_id, lead_id: str, contract: str = "default"):
    """Holds the start statement's lock of one (lead, contract) pair: a start of
    it waits in PostgreSQL until the block ends."""
    with engine.connect() as conn, conn.begin() as tx:
        conn.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtextextended("
                "CAST(:tenant AS text) || '/' || :lead || '/' || :contract, 0))"
            ),
            {"tenant": str(tenant_id), "lead": lead_id, "contract": contract},
        )
        yield
        tx.rollback()


def _wait_for(check, what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def _lock_waiters(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        ).scalar_one()


def _queued(app, tenant_id) -> int:
    tenant = services(app).start_groups._tenants.get(tenant_id)
    return 0 if tenant is None or tenant.waiting is None else len(tenant.waiting.starts)


def _post_during_a_held_start(app, engine, tenant, first: dict, rest: list[tuple[dict, dict]]):
    """POST ``first`` and hold it in PostgreSQL; POST each of ``rest`` (body,
    headers) meanwhile, let them queue behind it, then release. The responses,
    in the same order."""
    responses: list = [None] * (1 + len(rest))
    # The test releases the held start itself: no group may go beside it meanwhile.
    services(app).start_groups.max_wait_s = 30.0

    def post(i: int, body: dict, headers: dict | None = None) -> None:
        responses[i] = Api(app.test_client(), tenant[1]).post("/v1/timers", body, headers=headers)

    with _pair_held(engine, tenant[0], first["lead_id"]):
        threads = [threading.Thread(target=post, args=(0, first))]
        threads[0].start()
        _wait_for(lambda: _lock_waiters(engine) == 1, "the first start did not reach its lock")
        for i, (body, headers) in enumerate(rest, 1):
            threads.append(threading.Thread(target=post, args=(i, body, headers)))
            threads[-1].start()
        _wait_for(lambda: _queued(app, tenant[0]) == len(rest), "the starts did not queue")
    for t in threads:
        t.join(10)
    return responses


def _created_at(engine, timer_ids: list[str]) -> dict[str, object]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id, created_at FROM sla_timers WHERE id = ANY(CAST(:ids AS uuid[]))"),
            {"ids": timer_ids},
        )
        return {str(r.id): r.created_at for r in rows}


def test_starts_arriving_while_one_is_in_flight_commit_together_in_one_statement(
    app, engine, tenant
):
    leads = [f"lead-group-{i}" for i in range(6)]

    responses = _post_during_a_held_start(
        app,
        engine,
        tenant,
        {"lead_id": leads[0], "window_seconds": 600},
        [({"lead_id": lead, "window_seconds": 600}, None) for lead in leads[1:]],
    )

    assert [r.status_code for r in responses] == [201] * 6, [r.get_json() for r in responses]
    ids = [r.get_json()["id"] for r in responses]
    assert [r.get_json()["lead_id"] for r in responses] == leads
    created = _created_at(engine, ids)
    # One statement dates its rows with one statement_timestamp(): the five
    # that waited share theirs, after the first's.
    assert len({created[i] for i in ids[1:]}) == 1
    assert created[ids[1]] > created[ids[0]]
    with engine.connect() as conn:
        started = conn.execute(
            text(
                "SELECT count(*) FROM outbox_events "
                "WHERE event_type = 'sla.timer.started' AND timer_id = ANY(CAST(:ids AS uuid[]))"
            ),
            {"ids": ids},
        ).scalar_one()
    assert started == 6


def test_grouped_starts_the_statement_skips_answer_as_they_would_alone(app, engine, tenant):
    api = Api(app.test_client(), tenant[1])
    old = api.start(lead_id="lead-open")
    replayed = api.post(
        "/v1/timers",
        {"lead_id": "lead-keyed", "window_seconds": 600},
        headers={"Idempotency-Key": "key-1"},
    ).get_json()
    twice = {"lead_id": "lead-twice", "window_seconds": 600}

    responses = _post_during_a_held_start(
        app,
        engine,
        tenant,
        {"lead_id": "lead-first", "window_seconds": 600},
        [
            ({"lead_id": "lead-open", "window_seconds": 600}, None),  # supersedes
            ({"lead_id": "lead-keyed", "window_seconds": 600}, {"Idempotency-Key": "key-1"}),
            ({"lead_id": "lead-keyed", "window_seconds": 60}, {"Idempotency-Key": "key-1"}),
            (twice, None),
            (twice, None),
        ],
    )

    codes = [r.status_code for r in responses]
    assert codes == [201, 201, 200, 409, 201, 201], [r.get_json() for r in responses]
    assert responses[2].get_json()["id"] == replayed["id"]
    assert responses[2].headers["Idempotent-Replayed"] == "true"
    assert "Idempotency-Key" in responses[3].get_json()["detail"]
    old_now = api.get(f"/v1/timers/{old['id']}").get_json()
    assert (old_now["status"], old_now["cancel_reason"]) == ("CANCELLED", "superseded")
    # The same lead twice in one group ends as in sequence: one open timer.
    with engine.connect() as conn:
        open_twice = conn.execute(
            text(
                "SELECT count(*) FROM sla_timers WHERE lead_id = 'lead-twice' AND status = 'ACTIVE'"
            )
        ).scalar_one()
    assert open_twice == 1


def test_a_start_failing_on_its_data_in_a_group_fails_only_itself(app, engine, tenant):
    # No request can carry a window past PostgreSQL's integer (the schema caps
    # it), so the bad row is given to the groups directly, beside good ones.
    groups = services(app).start_groups
    groups.max_wait_s = 30.0  # the test releases the held start itself
    app_engine = services(app).engine
    results: dict[str, object] = {}

    def run(starts):
        return timer_sql.try_start_timers(app_engine, tenant[0], starts)

    def start(lead: str, window: int) -> None:
        new = timer_sql.NewTimer(
            lead_id=lead,
            sla_contract_id="default",
            started_at=None,
            window_seconds=window,
            escalation_steps=[],
            correlation_id="c",
            metadata={},
        )
        try:
            results[lead] = groups.start(tenant[0], new, None, run)
        except Exception as exc:
            results[lead] = exc

    with _pair_held(engine, tenant[0], "lead-held"):
        threads = [threading.Thread(target=start, args=("lead-held", 60))]
        threads[0].start()
        _wait_for(lambda: _lock_waiters(engine) == 1, "the first start did not reach its lock")
        for lead, window in [("lead-a", 60), ("lead-bad", 2**40), ("lead-b", 60)]:
            threads.append(threading.Thread(target=start, args=(lead, window)))
            threads[-1].start()
        _wait_for(lambda: _queued(app, tenant[0]) == 3, "the starts did not queue")
    for t in threads:
        t.join(10)

    assert isinstance(results["lead-bad"], psycopg.errors.NumericValueOutOfRange)
    assert {lead: results[lead]["lead_id"] for lead in ("lead-held", "lead-a", "lead-b")} == {
        "lead-held": "lead-held",
        "lead-a": "lead-a",
        "lead-b": "lead-b",
    }
    with engine.connect() as conn:
        leads = conn.execute(text("SELECT lead_id FROM sla_timers ORDER BY lead_id")).scalars()
        assert list(leads) == ["lead-a", "lead-b", "lead-held"]


def test_starts_of_another_tenant_never_join_a_tenants_group(app, engine, tenant, other_tenant):
    # One statement is one tenant's (row-level security scopes it): another
    # tenant's start goes at once, in its own statement, under its own tenant.
    services(app).start_groups.max_wait_s = 30.0
    responses: dict[str, object] = {}

    def post(name: str, key: str, lead: str) -> None:
        responses[name] = Api(app.test_client(), key).post(
            "/v1/timers", {"lead_id": lead, "window_seconds": 600}
        )

    with _pair_held(engine, tenant[0], "lead-held"):
        held = threading.Thread(target=post, args=("held", tenant[1], "lead-held"))
        held.start()
        _wait_for(lambda: _lock_waiters(engine) == 1, "the first start did not reach its lock")
        queued = threading.Thread(target=post, args=("queued", tenant[1], "lead-queued"))
        queued.start()
        _wait_for(lambda: _queued(app, tenant[0]) == 1, "the tenant's start did not queue")
        post("other", other_tenant[1], "lead-other")  # while the tenant's are held
        assert "held" not in responses and "queued" not in responses
    held.join(10)
    queued.join(10)

    assert [responses[k].status_code for k in ("held", "queued", "other")] == [201] * 3
    with engine.connect() as conn:
        owners = dict(conn.execute(text("SELECT lead_id, tenant_id FROM sla_timers")).all())
    assert owners == {
        "lead-held": tenant[0],
        "lead-queued": tenant[0],
        "lead-other": other_tenant[0],
    }
