"""Wake-ups on a real Redis and the sweeper's rescue of lost work."""

from __future__ import annotations

from datetime import timedelta
from uuid import uuid4

import dramatiq
import pytest
from sqlalchemy import text

from models import firing as firing_sql
from models.config import get_settings
from models.sla import utcnow, wakeup_instant
from tasks.actors import wake_up
from tasks.broker import QUEUE
from tasks.sweeper import sweep_once
from tasks.wakeups import schedule_wakeups
from tests.support import attempt_log
from tests.support.common import redis_conn
from tests.support.factories import overdue, start_timer

DELAY_QUEUE = f"dramatiq:{QUEUE}.DQ"


def epoch_ms(at) -> int:
    return int(at.timestamp() * 1000)


def status_of(engine, timer_id):
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT status, processing_status FROM sla_timers WHERE id = :id"),
            {"id": timer_id},
        ).one()


def delayed_messages():
    return redis_conn().llen(DELAY_QUEUE)


def delayed_wake_ups() -> list[tuple[tuple, int]]:
    """(args, eta in epoch ms) of each message on Dramatiq's delay queue, in
    queue order: the list holds message ids, a hash beside it the messages."""
    r = redis_conn()
    out = []
    for message_id in r.lrange(DELAY_QUEUE, 0, -1):
        message = dramatiq.Message.decode(r.hget(f"{DELAY_QUEUE}.msgs", message_id))
        assert (message.actor_name, message.queue_name) == ("wake_up", f"{QUEUE}.DQ")
        out.append((tuple(message.args), message.options["eta"]))
    return out


def assert_wake_ups_for(instants, now_ms: int, sent_by_ms: int) -> None:
    """One delayed wake-up per bucket of ``instants``, carrying the bucket's
    instant and due on Dramatiq's delay queue the wake-up lead before it."""
    settings = get_settings()
    buckets = sorted(
        {int(wakeup_instant(i, settings.wakeup_bucket_ms).timestamp() * 1000) for i in instants}
    )
    found = sorted(delayed_wake_ups())
    assert [args for args, _ in found] == [(b,) for b in buckets]
    for (eta_ms,), queued_eta in found:
        # Enqueued between now_ms and sent_by_ms with delay eta - now_ms - lead.
        earliest = eta_ms - settings.wakeup_lead_ms
        assert earliest <= queued_eta <= earliest + (sent_by_ms - now_ms), (eta_ms, queued_eta)


def test_timers_due_together_share_one_wake_up(engine):
    now = utcnow()
    soon = now + timedelta(seconds=30)
    # Three instants in one 100 ms bucket, one in the next, one beyond the horizon.
    instants = [soon.replace(microsecond=us) for us in (10_000, 20_000, 20_001, 150_000)]
    instants.append(now + timedelta(days=3))
    assert schedule_wakeups(instants, now=now) == 2
    assert_wake_ups_for(instants[:4], epoch_ms(now), epoch_ms(utcnow()))
    # Scheduling again (another scheduler, a duplicate start) sends nothing new.
    assert schedule_wakeups(instants, now=now) == 0
    assert delayed_messages() == 2


def test_duplicate_wake_ups_fire_each_step_once(engine, tenant):
    timer = start_timer(engine, tenant[0], started_at=overdue())
    for _ in range(3):
        wake_up.fn(int(utcnow().timestamp() * 1000))
    with engine.connect() as conn:
        steps = conn.execute(
            text("SELECT count(*) FROM sla_escalation_events WHERE timer_id = :id"),
            {"id": timer["id"]},
        ).scalar_one()
    assert steps == 1
    assert status_of(engine, timer["id"]) == ("ESCALATED", "COMPLETED")
    # The row is unique anyway: what shows a second firing is a second attempt.
    with engine.connect() as conn:
        assert attempt_log.attempts(conn) == 1
        assert attempt_log.duplicate_attempts(conn) == []


def test_a_timer_whose_wake_up_was_lost_is_fired_by_the_sweeper(engine, tenant):
    timer = start_timer(engine, tenant[0], started_at=overdue(seconds=1))
    schedule_wakeups([timer["due_at"]])
    redis_conn().flushdb()  # the message and its dedupe key are gone
    assert delayed_messages() == 0
    report = sweep_once()
    assert report.fired.claimed == 1
    assert status_of(engine, timer["id"]) == ("ESCALATED", "COMPLETED")


def test_a_row_stuck_in_processing_is_rescued_after_its_lease(engine, settings, tenant):
    timer = start_timer(engine, tenant[0], started_at=overdue())
    with engine.begin() as conn:
        # A worker claims the row and dies before processing it.
        assert firing_sql.claim_due(conn, uuid4(), utcnow(), 10, settings.lease_seconds)
    report = sweep_once()
    assert (report.rescued, report.fired.claimed) == (0, 0)  # lease still running
    assert status_of(engine, timer["id"]) == ("ACTIVE", "PROCESSING")

    with engine.begin() as conn:
        conn.execute(text("UPDATE sla_timers SET lease_expires_at = now() - interval '1 second'"))
    report = sweep_once()
    assert (report.rescued, report.fired.claimed) == (1, 1)
    assert status_of(engine, timer["id"]) == ("ESCALATED", "COMPLETED")


def test_the_sweeper_schedules_wake_ups_for_timers_entering_the_horizon(engine, tenant):
    near = start_timer(engine, tenant[0], window_seconds=120)  # inside the 300 s horizon
    start_timer(engine, tenant[0], window_seconds=7 * 86400)  # far beyond it
    before = utcnow()
    report = sweep_once()
    assert report.wakeups == 1
    assert_wake_ups_for([near["due_at"]], epoch_ms(before), epoch_ms(utcnow()))


def test_scheduling_survives_redis_being_down(engine, monkeypatch):
    import redis

    from tasks import wakeups

    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    monkeypatch.setattr(wakeups, "_redis", lambda: dead)
    assert schedule_wakeups([utcnow() + timedelta(seconds=5)]) == 0


def test_a_burst_asks_other_workers_to_join(engine, settings, tenant, monkeypatch):
    import dataclasses

    from tasks import wakeups

    small = dataclasses.replace(settings, batch_size=10, fire_parallelism=3)
    monkeypatch.setattr(wakeups, "get_settings", lambda: small)
    for _ in range(25):
        start_timer(engine, tenant[0], started_at=overdue())
    report = wakeups.fire_with_help()
    assert (report.claimed, report.batches) == (25, 3)
    # Two immediate wake-ups for other workers, which will find nothing left here
    # (beside them, the wake of webhook delivery for the events just written).
    assert queued_wake_ups() == 2

    redis_conn().flushdb()
    start_timer(engine, tenant[0], started_at=overdue())
    wakeups.fire_with_help()  # a batch that is not full asks for no help
    assert queued_wake_ups() == 0


def queued_wake_ups() -> int:
    import json

    messages = redis_conn().hvals(f"dramatiq:{QUEUE}.msgs")
    return sum(json.loads(m)["actor_name"] == "wake_up" for m in messages)


def test_a_scheduler_tick_survives_redis_being_down(monkeypatch):
    import redis

    from tasks.actors import sweep
    from tasks.broker import broker

    def down(*args, **kwargs):
        raise redis.ConnectionError("Connection refused")

    monkeypatch.setattr(broker, "enqueue", down)
    # periodiq sends ticks with scheduled_at: a failed tick must not kill the scheduler.
    assert sweep.send_with_options(scheduled_at="2026-01-01T00:00:00+00:00") is None
    # Any other sender still learns that the message was not sent.
    with pytest.raises(redis.ConnectionError):
        sweep.send()


def _wake_up_etas() -> list[int]:
    """The eta (epoch ms) each wake-up on the delay queue carries."""
    import json

    messages = redis_conn().hvals(f"{DELAY_QUEUE}.msgs")
    return sorted(json.loads(m)["args"][0] for m in messages)


def test_every_bucket_of_the_horizon_gets_a_wake_up_beyond_ten_thousand_instants(
    engine, settings, tenant
):
    # 12,000 distinct instants, 20 ms apart, over the next 4 minutes: more than
    # the 10,000 instants the sweep once read before bucketing them.
    from models.sla import wakeup_instant

    with engine.begin() as conn:
        dues = conn.execute(
            text(
                """
                INSERT INTO sla_timers (
                    id, tenant_id, lead_id, sla_contract_id, started_at, due_at,
                    window_seconds, correlation_id, escalation_steps, next_fire_at)
                SELECT gen_random_uuid(), :tenant, 'lead-' || g, 'default',
                       d - interval '600 seconds', d, 600, 'c-' || g, CAST(:steps AS jsonb), d
                FROM generate_series(1, 12000) AS g,
                     LATERAL (SELECT now() + interval '20 seconds'
                                     + g * interval '20 milliseconds' AS d) AS due
                RETURNING due_at
                """
            ),
            {
                "tenant": tenant[0],
                "steps": '[{"step": 1, "after_seconds": 0, "action": "notify"}]',
            },
        ).scalars()
        buckets = {
            int(wakeup_instant(d, settings.wakeup_bucket_ms).timestamp() * 1000) for d in dues
        }
    assert len(buckets) > 4000
    report = sweep_once()
    assert report.wakeups == len(buckets)
    # One message per bucket, each carrying its bucket's instant, the last included.
    assert _wake_up_etas() == sorted(buckets)
