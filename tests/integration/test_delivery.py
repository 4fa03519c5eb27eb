"""Webhook delivery (tasks/delivery.py) against real PostgreSQL and a real local
HTTP receiver (tests/support/receiver.py).

Subscriptions are written straight to the database, as the maintenance role;
events go through models.outbox.insert_events, so the fan-out trigger writes
their deliveries as in production. The delivery loop runs in-process
(``deliver_due``), with settings that allow the receiver's loopback address and
retry after (0, 1, 1) seconds.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from uuid import uuid4

import pytest
from sqlalchemy import text
from standardwebhooks.webhooks import Webhook

from models import deliveries as delivery_sql
from models.envelope import envelope
from models.outbox import insert_events
from models.signatures import new_secret
from tasks.delivery import close_couriers, deliver_due, lease_seconds
from tests.support.receiver import Receiver, Reply

TIMEOUT_S = 1.0


@pytest.fixture
def dsettings(settings):
    """Settings for delivery tests: loopback allowed, quick retries and timeouts."""
    yield dataclasses.replace(
        settings,
        webhook_allow_private_networks=True,
        webhook_retry_schedule=(0, 1, 1),
        webhook_timeout_seconds=TIMEOUT_S,
        delivery_concurrency=16,
    )
    close_couriers()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def subscribe(engine, tenant_id, url: str, **columns) -> dict:
    """A subscription row, written directly (the API is tested elsewhere)."""
    values = {"tenant_id": tenant_id, "url": url, "secret": new_secret(), **columns}
    names = ", ".join(values)
    params = ", ".join(f":{k}" for k in values)
    with engine.begin() as conn:
        row = conn.execute(
            text(f"INSERT INTO webhook_subscriptions ({names}) VALUES ({params}) RETURNING *"),
            values,
        )
        return dict(row.mappings().one())


def emit(engine, tenant_id, *, timer_id=None, n: int = 1, event_type="sla.timer.due") -> list:
    """``n`` events of one timer (a new one by default), in one transaction; their ids."""
    timer_id = timer_id or uuid4()
    now = datetime.now(UTC)
    rows = [
        {
            "tenant_id": tenant_id,
            "timer_id": timer_id,
            "event_type": event_type,
            "payload": {"type": event_type, "timer_id": timer_id, "lead_id": "lead-1", "n": i},
            "correlation_id": "corr-1",
            "idempotency_key": f"{timer_id}:{event_type}:{uuid4()}",
            "created_at": now,
        }
        for i in range(n)
    ]
    with engine.begin() as conn:
        insert_events(conn, rows)
        return list(
            conn.execute(
                text("SELECT id FROM outbox_events WHERE timer_id = :t ORDER BY id"),
                {"t": timer_id},
            ).scalars()
        )


def deliveries(engine, subscription_id=None) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT * FROM webhook_deliveries "
                "WHERE CAST(:s AS uuid) IS NULL OR subscription_id = :s ORDER BY id"
            ),
            {"s": subscription_id},
        )
        return [dict(r) for r in rows.mappings()]


def attempts(engine, delivery_id) -> list[dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT * FROM webhook_attempts WHERE delivery_id = :d ORDER BY id"),
            {"d": delivery_id},
        )
        return [dict(r) for r in rows.mappings()]


def deliver_until(engine, settings, done, timeout: float = 10, what="deliveries") -> None:
    """Run delivery loops until ``done()``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        report = deliver_due(engine, settings, max_seconds=2, use_redis=False)
        if not report.claimed:
            time.sleep(0.05)


def all_finished(engine) -> bool:
    return all(d["status"] != "PENDING" for d in deliveries(engine))


# -- signing ---------------------------------------------------------------------


def test_signatures_verify_with_standardwebhooks_own_verifier(engine, tenant, dsettings, receiver):
    sub = subscribe(engine, tenant[0], receiver.url + "/hook")
    [event_id] = emit(engine, tenant[0])
    deliver_until(engine, dsettings, lambda: all_finished(engine))

    [request] = receiver.received()
    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.webhook_id == f"evt_{event_id}"
    payload = Webhook(sub["secret"]).verify(request.body, request.headers)
    assert payload["id"] == f"evt_{event_id}"
    assert payload["type"] == "sla.timer.due"
    assert payload["data"]["tenant_id"] == str(tenant[0])
    [d] = deliveries(engine)
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("DELIVERED", 1, 200)
    assert d["delivered_at"] is not None and d["claim_token"] is None


def test_during_a_rotation_both_secrets_sign_and_either_verifies(
    engine, tenant, dsettings, receiver
):
    sub = subscribe(engine, tenant[0], receiver.url)
    old, new = sub["secret"], new_secret()
    with engine.begin() as conn:  # a rotation, as the API writes it
        conn.execute(
            text(
                "UPDATE webhook_subscriptions SET secret = :new, previous_secret = :old, "
                "previous_secret_expires_at = now() + interval '1 hour' WHERE id = :id"
            ),
            {"new": new, "old": old, "id": sub["id"]},
        )
    emit(engine, tenant[0])
    deliver_until(engine, dsettings, lambda: all_finished(engine))

    [request] = receiver.received()
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(request.body, request.headers)["type"] == "sla.timer.due"


def test_an_expired_previous_secret_no_longer_signs(engine, tenant, dsettings, receiver):
    sub = subscribe(
        engine,
        tenant[0],
        receiver.url,
        previous_secret=new_secret(),
        previous_secret_expires_at=datetime.now(UTC) - timedelta(seconds=1),
    )
    emit(engine, tenant[0])
    deliver_until(engine, dsettings, lambda: all_finished(engine))
    [request] = receiver.received()
    assert len(request.headers["webhook-signature"].split(" ")) == 1
    Webhook(sub["secret"]).verify(request.body, request.headers)


def test_the_claim_builds_the_envelope_of_models_envelope(engine, tenant):
    """The claim's SQL writes the envelope's text (workers send it as it is): the
    same object models.envelope makes of the event, the feed's too, whatever the
    payload holds (escapes, non-ASCII, nesting, numbers), its type said once."""
    sub = subscribe(engine, tenant[0], "http://127.0.0.1:9/")
    payload = {
        "type": "sla.escalation.triggered",
        "timer_id": str(uuid4()),
        "lead_id": 'lead "42" \\ é \n\t\u0001 ✓',
        "escalation_step": 2,
        "ratio": 0.1,
        "big": 12345678901234567,
        "nested": {"a": [1, None, True, "x"], "": {}},
    }
    created = datetime(2026, 12, 1, 13, 5, 7, 120, tzinfo=UTC)
    with engine.begin() as conn:
        insert_events(
            conn,
            [
                {
                    "tenant_id": tenant[0],
                    "timer_id": None,
                    "event_type": "sla.escalation.triggered",
                    "payload": payload,
                    "correlation_id": "corr-1",
                    "idempotency_key": f"claim-envelope:{uuid4()}",
                    "created_at": created,
                }
            ],
        )
        event = dict(
            conn.execute(
                text("SELECT * FROM outbox_events WHERE tenant_id = :t ORDER BY id DESC LIMIT 1"),
                {"t": tenant[0]},
            )
            .mappings()
            .one()
        )
    with engine.connect() as conn:  # the workers' claim: the driver, in autocommit
        driver = conn.connection.driver_connection
        driver.autocommit = True
        [row] = delivery_sql.claim(
            driver, uuid4(), limit=10, max_in_flight=10, lease_seconds=30, first_delay=0
        )
        driver.autocommit = False
    assert row.webhook_id == f"evt_{event['id']}"
    assert json.loads(row.body) == envelope(event)
    assert json.loads(row.body)["timestamp"] == "2026-12-01T13:05:07.000120Z"
    assert (row.subscription_id, row.tenant_id, row.attempts) == (sub["id"], tenant[0], 0)
    assert (row.url, row.secret, row.previous_secret) == (sub["url"], sub["secret"], None)
    assert row.correlation_id == "corr-1"


# -- retries ---------------------------------------------------------------------


def test_a_receiver_failing_twice_gets_the_same_id_each_time_and_is_delivered_once(
    engine, tenant, dsettings, receiver
):
    subscribe(engine, tenant[0], receiver.url)
    receiver.script(Reply(500, body=b"boom"), Reply(502))
    [event_id] = emit(engine, tenant[0])
    deliver_until(engine, dsettings, lambda: all_finished(engine))

    requests = receiver.received()
    assert [r.status for r in requests] == [500, 502, 200]
    assert {r.webhook_id for r in requests} == {f"evt_{event_id}"}
    # Retried after the schedule's 1 s, not at once.
    assert requests[1].at - requests[0].at >= 0.9
    [d] = deliveries(engine)
    assert (d["status"], d["attempts"]) == ("DELIVERED", 3)
    tries = attempts(engine, d["id"])
    assert [(a["attempt"], a["status_code"]) for a in tries] == [(1, 500), (2, 502), (3, 200)]
    assert tries[0]["error"] == "HTTP 500: boom"
    assert all(a["duration_ms"] >= 0 for a in tries)


def test_a_dead_receiver_ends_failed_after_the_schedule(engine, tenant, dsettings, receiver):
    sub = subscribe(engine, tenant[0], receiver.url)
    receiver.default = Reply(503)
    emit(engine, tenant[0])
    deliver_until(engine, dsettings, lambda: all_finished(engine))

    assert len(receiver.received()) == len(dsettings.webhook_retry_schedule) == 3
    [d] = deliveries(engine)
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("FAILED", 3, 503)
    assert [a["attempt"] for a in attempts(engine, d["id"])] == [1, 2, 3]
    with engine.connect() as conn:
        failing_since = conn.execute(
            text("SELECT failing_since FROM webhook_subscriptions WHERE id = :id"),
            {"id": sub["id"]},
        ).scalar_one()
    assert failing_since is not None


def test_a_connection_refused_and_a_timeout_are_failed_attempts(engine, tenant, dsettings):
    with Receiver(Reply(hang=True)) as hanging:
        subscribe(engine, tenant[0], hanging.url)
        closed = Receiver()
        closed.close()  # nothing listens on its port any more
        subscribe(engine, tenant[0], closed.url)
        emit(engine, tenant[0])
        started = time.monotonic()
        deliver_due(engine, dsettings, max_seconds=0.1, use_redis=False)
        assert time.monotonic() - started < TIMEOUT_S + 1.5  # the timeout bounds a hang
    errors = sorted(d["last_error"] for d in deliveries(engine))
    assert errors[0].startswith("connection failed"), errors
    assert errors[1] == f"timed out after {TIMEOUT_S:g} s", errors
    assert all(d["status"] == "PENDING" and d["attempts"] == 1 for d in deliveries(engine))


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured_on_429_and_503(engine, tenant, dsettings, receiver, status, form):
    value = (
        "30"
        if form == "seconds"
        else format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    )
    receiver.script(Reply(status, headers={"Retry-After": value}))
    subscribe(engine, tenant[0], receiver.url)
    emit(engine, tenant[0])
    deliver_due(engine, dsettings, max_seconds=0.5, use_redis=False)

    [d] = deliveries(engine)
    assert (d["status"], d["attempts"]) == ("PENDING", 1)
    wait = (d["next_attempt_at"] - d["last_attempt_at"]).total_seconds()
    assert 27 <= wait <= 31  # not the schedule's 1 s
    deliver_due(engine, dsettings, max_seconds=0.2, use_redis=False)
    assert len(receiver.received()) == 1  # not sent again before then


def test_retry_after_on_other_statuses_is_ignored_and_capped_at_a_day():
    from models.deliveries import MAX_RETRY_AFTER_S, Outcome, decide

    def outcome(status, retry_after):
        return Outcome(1, uuid4(), uuid4(), 1, status, 5, "x", retry_after, tenant_id=uuid4())

    assert decide(outcome(500, 30.0), (0, 1, 1)) == ("PENDING", 1.0)
    assert decide(outcome(429, 10 * MAX_RETRY_AFTER_S), (0, 1, 1)) == (
        "PENDING",
        float(MAX_RETRY_AFTER_S),
    )
    assert decide(outcome(429, 0.5), (0, 5)) == ("PENDING", 5.0)  # never sooner than the schedule


def test_redirects_are_not_followed(engine, tenant, dsettings, receiver):
    receiver.script(Reply(302, headers={"Location": receiver.url + "/elsewhere"}), path="/hook")
    subscribe(engine, tenant[0], receiver.url + "/hook")
    emit(engine, tenant[0])
    deliver_due(engine, dsettings, max_seconds=0.5, use_redis=False)

    assert [r.path for r in receiver.received()] == ["/hook"]
    [d] = deliveries(engine)
    assert (d["status"], d["last_status_code"]) == ("PENDING", 302)
    assert "redirects are not followed" in d["last_error"]


def test_a_non_zero_first_delay_holds_the_first_attempt(engine, tenant, dsettings, receiver):
    later = dataclasses.replace(dsettings, webhook_retry_schedule=(2, 1))
    subscribe(engine, tenant[0], receiver.url)
    emit(engine, tenant[0])
    deliver_due(engine, later, max_seconds=0.3, use_redis=False)
    assert receiver.received() == []
    time.sleep(2)
    deliver_until(engine, later, lambda: all_finished(engine))
    assert len(receiver.received()) == 1


# -- order and isolation -----------------------------------------------------------


def test_one_timers_events_arrive_in_order_when_the_first_is_retried(
    engine, tenant, dsettings, receiver
):
    subscribe(engine, tenant[0], receiver.url)
    receiver.script(Reply(500))  # the first event's first attempt
    ids = emit(engine, tenant[0], n=3)
    deliver_until(engine, dsettings, lambda: all_finished(engine))

    got = [(r.webhook_id, r.status) for r in receiver.received()]
    first, second, third = (f"evt_{i}" for i in ids)
    assert got == [(first, 500), (first, 200), (second, 200), (third, 200)]


def test_events_without_a_timer_are_not_held_back_by_a_retry(engine, tenant, dsettings, receiver):
    sub = subscribe(engine, tenant[0], receiver.url)
    receiver.script(Reply(500))
    emit(engine, tenant[0])
    deliver_due(engine, dsettings, max_seconds=0.3, use_redis=False)  # fails, retried in 1 s
    with engine.begin() as conn:
        delivery_sql.insert_events(
            conn,
            [
                delivery_sql.disabled_event(
                    {
                        "id": uuid4(),
                        "tenant_id": tenant[0],
                        "url": sub["url"],
                        "failing_since": None,
                        "disabled_reason": "test",
                        "disable_count": 1,
                        "at": datetime.now(UTC),
                    }
                )
            ],
        )
    deliver_due(engine, dsettings, max_seconds=0.3, use_redis=False)
    assert [r.json()["type"] for r in receiver.received()] == ["sla.timer.due", "webhook.disabled"]


def test_a_dead_subscription_does_not_delay_another_tenants_deliveries(
    engine, tenant, other_tenant, dsettings
):
    with Receiver(Reply(hang=True)) as dead, Receiver() as alive:
        subscribe(engine, tenant[0], dead.url)
        subscribe(engine, other_tenant[0], alive.url)
        for _ in range(5):
            emit(engine, tenant[0])
        loop = threading.Thread(
            target=deliver_due,
            args=(engine, dsettings),
            kwargs={"max_seconds": 3, "use_redis": False},
        )
        loop.start()
        try:
            dead.wait_for(5, timeout=3)  # the dead one holds five requests open...
            committed = time.time()
            emit(engine, other_tenant[0])
            emit(engine, other_tenant[0])
            # ...while the other tenant's events, committed meanwhile, arrive at once.
            got = alive.wait_for(2, timeout=TIMEOUT_S)
            assert max(r.at for r in got) - committed < 0.75 * TIMEOUT_S
        finally:
            loop.join()


def test_a_dead_subscription_with_its_whole_room_in_flight_leaves_threads_for_others(
    engine, tenant, other_tenant, dsettings
):
    """With the shipped defaults' ratio of sending threads to a subscription's
    room, a dead endpoint holding its whole room open leaves threads free: the
    other tenant's deliveries, claimed by the same process meanwhile, are sent
    at once instead of queueing behind requests that wait for their timeout."""
    from models.config import Settings

    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    ratio = defaults["delivery_concurrency"] / defaults["webhook_max_in_flight"]
    assert ratio >= 2, "one subscription's room may fill every sending thread"
    room = 4
    settings = dataclasses.replace(
        dsettings, webhook_max_in_flight=room, delivery_concurrency=int(room * ratio)
    )
    with Receiver(Reply(hang=True)) as dead, Receiver() as alive:
        subscribe(engine, tenant[0], dead.url)
        subscribe(engine, other_tenant[0], alive.url)
        for _ in range(2 * room):
            emit(engine, tenant[0])
        loop = threading.Thread(
            target=deliver_due,
            args=(engine, settings),
            kwargs={"max_seconds": 3, "use_redis": False},
        )
        loop.start()
        try:
            dead.wait_for(room, timeout=3)  # the whole room, held open
            committed = time.time()
            emit(engine, other_tenant[0])
            got = alive.wait_for(1, timeout=TIMEOUT_S)
            assert max(r.at for r in got) - committed < 0.75 * TIMEOUT_S
        finally:
            loop.join()


def test_in_flight_requests_per_subscription_are_bounded_across_claimers(
    engine, tenant, other_tenant, dsettings, receiver
):
    narrow = dataclasses.replace(dsettings, webhook_max_in_flight=3)
    busy = subscribe(engine, tenant[0], receiver.url)
    other = subscribe(engine, other_tenant[0], receiver.url)
    for _ in range(10):
        emit(engine, tenant[0])
    emit(engine, other_tenant[0])

    def claim(limit=100):
        with engine.begin() as conn:
            return delivery_sql.claim_due(
                conn, uuid4(), limit=limit, max_in_flight=3, lease_seconds=30, first_delay=0
            )

    first, second = claim(), claim()
    assert sorted(r["subscription_id"] for r in first) == sorted([busy["id"]] * 3 + [other["id"]])
    assert second == []  # the busy one's room is full, by another claimer's claims
    assert narrow.webhook_max_in_flight == 3


def test_a_failing_subscription_is_probed_with_fewer_requests_in_flight(engine, tenant):
    """A dead endpoint holds a sending thread per request for a whole timeout: while
    its last attempt failed, it gets the failing room, not the full one."""
    sub = subscribe(engine, tenant[0], "http://127.0.0.1:9/dead")
    for _ in range(10):
        emit(engine, tenant[0])

    def claim():
        with engine.begin() as conn:
            return delivery_sql.claim_due(
                conn,
                uuid4(),
                limit=100,
                max_in_flight=8,
                failing_in_flight=2,
                lease_seconds=30,
                first_delay=0,
            )

    with engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_subscriptions SET failing_since = now() WHERE id = :id"),
            {"id": sub["id"]},
        )
    assert len(claim()) == 2
    assert claim() == []  # its room is full
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_subscriptions SET failing_since = NULL WHERE id = :id"),
            {"id": sub["id"]},
        )
    assert len(claim()) == 6  # healthy again: the full room, less the two in flight


def test_a_flaky_subscription_keeps_its_room_until_it_has_had_no_success_for_a_while(
    engine, tenant
):
    """failing_since is reset by every recorded success, so a receiver failing
    some requests among successes always has a recent one: it keeps the full
    room. Only a subscription with no success for ``failing_after`` seconds (a
    dead endpoint) is probed with the failing room."""
    sub = subscribe(engine, tenant[0], "http://127.0.0.1:9/flaky")
    for _ in range(10):
        emit(engine, tenant[0])

    def claim(failing_for: str):
        with engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE webhook_subscriptions SET failing_since = now() - CAST(:f AS interval)"
                    " WHERE id = :id"
                ),
                {"f": failing_for, "id": sub["id"]},
            )
        with engine.begin() as conn:
            return delivery_sql.claim_due(
                conn,
                uuid4(),
                limit=100,
                max_in_flight=8,
                failing_in_flight=2,
                failing_after=60,
                lease_seconds=30,
                first_delay=0,
            )

    assert len(claim("2 minutes")) == 2  # no success for two minutes: the failing room
    assert len(claim("1 second")) == 6  # a success a second ago: the full room, less two


def test_a_retry_holds_back_the_later_events_of_its_timer(engine, tenant, dsettings, receiver):
    """Per-timer order keeps a timer's later deliveries waiting behind a retry;
    they also move to the retry's next attempt, so they do not sit blocked at the
    front of the due index for every claim to walk through."""
    sub = subscribe(engine, tenant[0], receiver.url)
    receiver.script(Reply(500))  # the first request fails, the rest succeed
    emit(engine, tenant[0], n=3)
    deliver_due(engine, dsettings, max_seconds=0.3, use_redis=False)

    first, *later = sorted(deliveries(engine, sub["id"]), key=lambda d: d["event_id"])
    assert first["status"] == "PENDING" and first["attempts"] == 1
    assert [d["attempts"] for d in later] == [0, 0]  # held back by per-timer order
    assert all(d["next_attempt_at"] == first["next_attempt_at"] for d in later)
    deliver_until(engine, dsettings, lambda: all_finished(engine))
    assert [r.json()["id"] for r in receiver.received()][1:] == [
        f"evt_{d['event_id']}" for d in (first, *later)
    ]


def test_two_concurrent_claimers_never_claim_the_same_delivery(engine, tenant):
    subs = [subscribe(engine, tenant[0], f"http://127.0.0.1:9/{i}") for i in range(4)]
    for _ in range(150):
        emit(engine, tenant[0])
    assert len(deliveries(engine)) == 600
    claimed: list[list[int]] = [[], []]
    barrier = threading.Barrier(2)

    def claimer(k: int) -> None:
        barrier.wait()
        while True:
            with engine.begin() as conn:
                rows = delivery_sql.claim_due(
                    conn, uuid4(), limit=50, max_in_flight=1000, lease_seconds=60, first_delay=0
                )
            if not rows:
                return
            claimed[k] += [r["id"] for r in rows]

    threads = [threading.Thread(target=claimer, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(claimed[0]).isdisjoint(claimed[1])
    assert len(claimed[0]) + len(claimed[1]) == 600 == len(set(claimed[0] + claimed[1]))
    assert len(subs) == 4


def test_a_killed_claimers_lease_ends_and_the_delivery_is_sent_again(
    engine, tenant, dsettings, receiver
):
    subscribe(engine, tenant[0], receiver.url)
    [event_id] = emit(engine, tenant[0])
    with engine.begin() as conn:  # a claimer that dies before recording anything
        [lost] = delivery_sql.claim_due(
            conn, uuid4(), limit=10, max_in_flight=10, lease_seconds=1, first_delay=0
        )
    assert deliver_due(engine, dsettings, max_seconds=0.2, use_redis=False).claimed == 0
    time.sleep(1.1)
    deliver_until(engine, dsettings, lambda: all_finished(engine))

    [request] = receiver.received()
    assert request.webhook_id == f"evt_{event_id}"
    [d] = deliveries(engine)
    assert (d["id"], d["status"], d["attempts"]) == (lost["id"], "DELIVERED", 1)


def test_an_outcome_recorded_after_the_claim_was_taken_over_is_dropped(engine, tenant, dsettings):
    subscribe(engine, tenant[0], "http://127.0.0.1:9/")
    emit(engine, tenant[0])
    with engine.begin() as conn:
        [old] = delivery_sql.claim_due(
            conn, uuid4(), limit=1, max_in_flight=10, lease_seconds=0, first_delay=0
        )
    with engine.begin() as conn:
        [new] = delivery_sql.claim_due(
            conn, (token := uuid4()), limit=1, max_in_flight=10, lease_seconds=60, first_delay=0
        )
    stale = delivery_sql.Outcome(
        old["id"], old["subscription_id"], uuid4(), 1, 200, 3, tenant_id=old["tenant_id"]
    )
    with engine.begin() as conn:
        delivery_sql.record_outcomes(conn, [stale], (0, 1), disable_after_seconds=100)
    [d] = deliveries(engine)
    assert (d["status"], d["claim_token"], attempts(engine, d["id"])) == ("PENDING", token, [])
    assert new["id"] == old["id"]


def test_a_disabled_subscriptions_deliveries_wait(engine, tenant, dsettings, receiver):
    sub = subscribe(engine, tenant[0], receiver.url)
    emit(engine, tenant[0])
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_subscriptions SET enabled = false WHERE id = :id"),
            {"id": sub["id"]},
        )
    deliver_due(engine, dsettings, max_seconds=0.3, use_redis=False)
    assert receiver.received() == []
    assert deliveries(engine)[0]["status"] == "PENDING"


# -- the SSRF guard at delivery ---------------------------------------------------------


def test_a_private_destination_is_not_sent_to_and_the_attempt_says_why(
    engine, tenant, dsettings, receiver
):
    guarded = dataclasses.replace(dsettings, webhook_allow_private_networks=False)
    subscribe(engine, tenant[0], receiver.url)  # 127.0.0.1: a row the API would refuse
    emit(engine, tenant[0])
    deliver_due(engine, guarded, max_seconds=0.5, use_redis=False)

    assert receiver.received() == []
    [d] = deliveries(engine)
    assert (d["status"], d["attempts"], d["last_status_code"]) == ("PENDING", 1, None)
    assert d["last_error"].startswith("unsafe destination, not sent: 127.0.0.1 resolves to a")
    assert "loopback" in d["last_error"]


def test_the_connection_goes_to_the_checked_address_not_to_a_new_lookup(
    engine, tenant, dsettings, receiver, monkeypatch
):
    # The check saw 127.0.0.1 for a name that no longer resolves at all (a
    # rebinding attacker's answer may change): the request still goes to the
    # checked address, with the URL's host in its Host header.
    from models.destinations import Destination
    from tasks import sender

    def checked(url, *, allow_private):
        return Destination(url, "http", "rebind.invalid", receiver.port, ("127.0.0.1",))

    monkeypatch.setattr(sender, "check", checked)
    subscribe(engine, tenant[0], f"http://rebind.invalid:{receiver.port}/pinned?x=1")
    emit(engine, tenant[0])
    deliver_until(engine, dsettings, lambda: all_finished(engine))
    [request] = receiver.received()
    assert request.path == "/pinned?x=1"
    assert request.headers["host"] == f"rebind.invalid:{receiver.port}"


# -- auto-disable -------------------------------------------------------------------


def set_failing_since(engine, sub_id, seconds_ago: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE webhook_subscriptions SET failing_since = now() - make_interval(secs => :s)"
                " WHERE id = :id"
            ),
            {"s": seconds_ago, "id": sub_id},
        )


def subscription(engine, sub_id) -> dict:
    with engine.connect() as conn:
        return dict(
            conn.execute(text("SELECT * FROM webhook_subscriptions WHERE id = :id"), {"id": sub_id})
            .mappings()
            .one()
        )


def test_a_subscription_failing_for_the_configured_time_is_disabled_with_an_event(
    engine, tenant, dsettings
):
    quick = dataclasses.replace(dsettings, webhook_disable_after_seconds=60)
    with Receiver(Reply(500)) as dead, Receiver() as watcher:
        sub = subscribe(engine, tenant[0], dead.url)
        subscribe(engine, tenant[0], watcher.url, event_types=["webhook.disabled"])
        emit(engine, tenant[0])
        deliver_due(engine, quick, max_seconds=0.3, use_redis=False)
        assert subscription(engine, sub["id"])["enabled"]  # a first failure never disables
        set_failing_since(engine, sub["id"], 61)
        time.sleep(1)  # the retry is due
        deliver_due(engine, quick, max_seconds=0.5, use_redis=False)

        s = subscription(engine, sub["id"])
        assert (s["enabled"], s["disable_count"]) == (False, 1)
        assert s["disabled_at"] is not None and "60 s" in s["disabled_reason"]
        with engine.connect() as conn:
            event = dict(
                conn.execute(
                    text("SELECT * FROM outbox_events WHERE event_type = 'webhook.disabled'")
                )
                .mappings()
                .one()
            )
        assert event["tenant_id"] == tenant[0] and event["timer_id"] is None
        assert event["idempotency_key"] == f"webhook:{sub['id']}:disabled:1"
        assert event["payload"]["subscription_id"] == str(sub["id"])
        assert event["payload"]["url"] == dead.url
        # The tenant's other subscription receives it.
        deliver_until(
            engine, quick, lambda: watcher.received(), what="webhook.disabled to the watcher"
        )
        assert watcher.received()[0].json()["type"] == "webhook.disabled"
        # The disabled one's delivery waits, PENDING.
        assert len(dead.received()) == 2


def test_a_success_resets_the_failure_clock(engine, tenant, dsettings, receiver):
    quick = dataclasses.replace(dsettings, webhook_disable_after_seconds=60)
    sub = subscribe(engine, tenant[0], receiver.url)
    set_failing_since(engine, sub["id"], 3600)  # failing for an hour
    emit(engine, tenant[0])
    deliver_until(engine, quick, lambda: all_finished(engine))

    s = subscription(engine, sub["id"])
    assert (s["enabled"], s["failing_since"]) == (True, None)
    assert s["last_success_at"] is not None
    receiver.script(Reply(500))
    emit(engine, tenant[0])
    deliver_due(engine, quick, max_seconds=0.3, use_redis=False)
    s = subscription(engine, sub["id"])
    assert s["enabled"] and s["failing_since"] is not None  # a new streak, not disabled


def test_lease_covers_twice_the_timeout(dsettings):
    assert lease_seconds(dsettings) >= 2 * dsettings.webhook_timeout_seconds


def test_at_most_max_loops_run_per_process_so_wake_ups_keep_their_threads(
    engine, tenant, dsettings, monkeypatch
):
    from tasks import delivery

    monkeypatch.setattr(delivery, "MAX_LOOPS", 1)
    with Receiver(Reply(hang=True)) as dead:
        subscribe(engine, tenant[0], dead.url)
        for _ in range(3):
            emit(engine, tenant[0])
        loop = threading.Thread(target=delivery.run_delivery, args=(engine, dsettings))
        loop.start()
        dead.wait_for(3, timeout=3)
        started = time.monotonic()
        # A further message only kicks the running loop: it returns at once,
        # leaving its worker thread to the timers' wake-ups.
        assert delivery.run_delivery(engine, dsettings) is None
        assert time.monotonic() - started < 0.1
        loop.join()


class _LockThatLetsAMessageIn:
    """``tasks.delivery._loops_lock``, calling ``arrive`` once, right after the
    first release that follows ``arm()``: a ``deliver`` message arriving at the
    worst moment for the loop that just found nothing to claim."""

    def __init__(self, arrive) -> None:
        self._lock, self._arrive = threading.Lock(), arrive
        self.armed = self.fired = False

    def __enter__(self):
        return self._lock.__enter__()

    def __exit__(self, *exc):
        self._lock.__exit__(*exc)
        if self.armed:
            self.armed, self.fired = False, True
            self._arrive()


def test_a_message_arriving_as_a_loop_stops_is_not_lost_on_it(
    engine, tenant, dsettings, receiver, monkeypatch
):
    """A loop claims nothing and decides to stop; a commit and its ``deliver``
    message come right then, with the process at MAX_LOOPS. The message must
    start a loop or reach one that claims again, never kick the stopping loop
    and be lost (its event would wait for the wake flag to expire and a later
    commit, or for the minute sweep)."""
    from tasks import delivery

    monkeypatch.setattr(delivery, "MAX_LOOPS", 1)
    subscribe(engine, tenant[0], receiver.url)
    outcomes = []

    def arrive() -> None:
        emit(engine, tenant[0])
        outcomes.append(delivery.run_delivery(engine, dsettings))

    lock = _LockThatLetsAMessageIn(arrive)
    monkeypatch.setattr(delivery, "_loops_lock", lock)
    claim = delivery._claim

    def claim_then_arm(*args, **kwargs):
        rows = claim(*args, **kwargs)
        if not rows and not lock.fired:
            lock.armed = True  # the loop's next release ends its last check
        return rows

    monkeypatch.setattr(delivery, "_claim", claim_then_arm)
    delivery.run_delivery(engine, dsettings)

    assert len(outcomes) == 1
    assert len(receiver.received()) == 1, "the event waited for a later wake"


def test_a_message_finding_every_slot_taken_passes_its_wake_on(
    engine, tenant, dsettings, receiver, monkeypatch
):
    """A loop's claim holds all of the process's slots while it runs, and its
    snapshot predates a commit; that commit's ``deliver`` message starts a
    second loop, which finds no free slot and stops. The first loop must then
    claim again: otherwise the event waits for the wake flag to expire (a
    second; P6d's baseline showed it as a p99 of ≈ 1 s)."""
    from tasks import delivery

    settings = dataclasses.replace(dsettings, delivery_batch_size=10_000)
    subscribe(engine, tenant[0], receiver.url)
    claim = delivery._claim
    second = []

    def claim_then_commit(*args, **kwargs):
        rows = claim(*args, **kwargs)
        if not second:  # the first claim: nothing yet, and every slot taken
            emit(engine, tenant[0])
            second.append(delivery.run_delivery(engine, settings))
        return rows

    monkeypatch.setattr(delivery, "_claim", claim_then_commit)
    first = delivery.run_delivery(engine, settings)

    assert second[0] is not None and second[0].claims == 0, "the second loop found a free slot"
    assert first.delivered == 1, "the event waited for a later wake"
    assert len(receiver.received()) == 1


def test_the_record_finds_its_deliveries_by_their_keys_in_a_large_table(engine, tenant):
    """A round's outcomes are joined to their deliveries by the primary key, not
    by a hash over a scan of the whole table (with the outcomes passed as one
    JSON document, counted as 100 rows, that was the plan below a few hundred
    thousand deliveries: milliseconds per recording, growing with the table)."""
    sub = subscribe(engine, tenant[0], "http://127.0.0.1:9/")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO outbox_events (tenant_id, timer_id, event_type, payload,"
                " correlation_id, idempotency_key)"
                " SELECT :tenant, md5(g::text)::uuid, 'sla.timer.due', '{}'::jsonb, 'c', g"
                " FROM generate_series(1, 20000) g"
            ),
            {"tenant": tenant[0]},
        )
        ids = conn.execute(text("SELECT id FROM webhook_deliveries LIMIT 64")).scalars().all()
    n = len(ids)
    params = {
        "o_tenant_id": [tenant[0]] * n,
        "o_id": ids,
        "o_token": [uuid4() for _ in ids],
        "o_attempt": [1] * n,
        "o_status": ["DELIVERED"] * n,
        "o_delay": [0.0] * n,
        "o_status_code": [200] * n,
        "o_duration_ms": [3] * n,
        "o_error": [None] * n,
        "health": json.dumps([{"id": str(sub["id"]), "ok": True, "succeeded": True}]),
        "disable_after": 3600,
        "disabled_reason": "x",
        "now": None,
    }
    with engine.connect() as conn:  # planned, not run
        [plan] = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + delivery_sql.SQL.record_outcomes.text.text), params
        ).scalar_one()
    whole = [
        (n["Node Type"], n.get("Alias"))
        for n in _plan_nodes(plan["Plan"])
        if n.get("Relation Name") == "webhook_deliveries"
        and n["Node Type"] != "ModifyTable"
        and "Index Cond" not in n
    ]
    assert whole == []


def test_the_claim_is_planned_for_its_parameters_at_every_run(engine, tenant):
    """The claim is never a prepared statement: PostgreSQL would switch it to a
    generic plan after its fifth run whenever the estimates of that moment
    favoured one, and that plan cost ten times the claim (P6d's tenant B then
    waited 10-30 s for its deliveries, at random)."""
    subscribe(engine, tenant[0], "http://127.0.0.1:9/")
    emit(engine, tenant[0])
    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        for _ in range(8):  # psycopg prepares a statement at its fifth run by default
            delivery_sql.claim(
                driver, uuid4(), limit=0, max_in_flight=1, lease_seconds=30, first_delay=0
            )
        prepared = driver.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
            ("%subs AS (%",),
        ).fetchone()[0]
        conn.rollback()
    assert prepared == 0


def _plan_nodes(node: dict) -> Iterator[dict]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_the_claim_reads_only_index_entries_it_needs_on_a_table_never_analyzed(engine, tenant):
    """A backlog written since the last ANALYZE (a burst; on this machine's server
    autovacuum is off): the claim's per-timer order check must still read the
    timer's entry of ix_webhook_deliveries_pending_timer, not a subscription's
    whole backlog through the due index (seconds a claim at 100,000 deliveries),
    and the room's count must read only the live claims.
    40,000 deliveries: with fewer, the planner happened to choose well anyway."""
    subscribe(engine, tenant[0], "http://127.0.0.1:9/")
    # Statistics of an empty table (a fresh deploy, or a table just emptied, as
    # the benchmarks do), then a backlog.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("SET ROLE NONE")  # VACUUM is the owner's
        try:
            conn.exec_driver_sql("VACUUM ANALYZE webhook_deliveries")
        finally:
            conn.exec_driver_sql("RESET ROLE")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO outbox_events (tenant_id, timer_id, event_type, payload,"
                " correlation_id, idempotency_key)"
                " SELECT :tenant, md5(g::text)::uuid, k, '{}'::jsonb, 'c', g || k"
                " FROM generate_series(1, 20000) g,"
                " unnest(ARRAY['sla.timer.due', 'sla.escalation.triggered']) k"
            ),
            {"tenant": tenant[0]},
        )
    params = {
        "token": uuid4(),
        "limit": 64,
        "max_in_flight": 64,
        "failing_in_flight": 2,
        "failing_after": 1.0,
        "lease": 30.0,
        "first_delay": 0.0,
        "now": None,
    }
    with engine.connect() as conn:  # planned, not run
        [plan] = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + delivery_sql.SQL.claim_due.text.text), params
        ).scalar_one()
    order_checks = [
        n
        for n in _plan_nodes(plan["Plan"])
        # The order check's alias, renamed by the plan: e_1 (outbox_events is e).
        if n.get("Relation Name") == "webhook_deliveries" and n.get("Alias", "").startswith("e")
    ]
    assert order_checks
    assert {n.get("Index Name") for n in order_checks} == {"ix_webhook_deliveries_pending_timer"}
    # The room's count of live claims reads the in-flight index: through the due
    # index it walked the subscription's whole backlog (a dead endpoint's grows
    # for days) in every claim, for every claimer.
    counts = [
        n
        for n in _plan_nodes(plan["Plan"])
        if n.get("Relation Name") == "webhook_deliveries" and n.get("Alias", "").startswith("f")
    ]
    assert counts
    assert {n.get("Index Name") for n in counts} == {"ix_webhook_deliveries_in_flight"}
    # Nor does any other part read a whole table or index: the claimed rows and their
    # events are found by their primary keys, (tenant_id, id).
    whole = [
        (n["Node Type"], n.get("Alias"))
        for n in _plan_nodes(plan["Plan"])
        if n.get("Relation Name") in ("webhook_deliveries", "outbox_events")
        and n["Node Type"] != "ModifyTable"
        and "Index Cond" not in n
    ]
    assert whole == []
