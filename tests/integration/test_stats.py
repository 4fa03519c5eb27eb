"""GET /v1/stats: the figures of a hand-counted set of timers, the same
whether counted live or from the rollup, and never another tenant's timers.

The set (``world``) is laid across every part a range splits into: the minutes
at its ends (counted live), whole hours beside them and whole days (from the
rollup once folded), and timers just outside it. Started at T, midnight UTC
three days ago; the range is [T + 30 min, T + 2 d + 1 h 30 min).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
from sqlalchemy import text

from models import stats
from models.db import get_maintenance_engine
from models.sla import utcnow
from models.timers import finish_timer
from tasks.firing import fire_due
from tasks.stats import fold_stats
from tests.support.api import assert_problem
from tests.support.factories import start_timer

TWO_STEPS = (
    {"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"},
    {"step": 2, "after_seconds": 600, "action": "reassign", "target": "team-lead"},
)
T = (utcnow() - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
FROM, TO = T + timedelta(minutes=30), T + timedelta(days=2, hours=1, minutes=30)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass
class World:
    tenant_id: UUID
    timers: dict[str, dict]


def _start(engine, tenant_id, name, at, **kw) -> dict:
    return start_timer(
        engine,
        tenant_id,
        lead_id=kw.pop("lead_id", f"lead-{name}"),
        started_at=at,
        window_seconds=60,
        steps=TWO_STEPS,
        **kw,
    )


def _close(engine, tenant_id, timer, verb, after_seconds, reason=None) -> None:
    with engine.begin() as conn:
        finish_timer(
            conn,
            tenant_id,
            timer["id"],
            verb,
            timer["started_at"] + timedelta(seconds=after_seconds),
            reason,
        )


def _warning(engine, tenant_id, timer, threshold, outcome) -> None:
    # In the shape the firing path writes them (migration 0006).
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO sla_timer_warnings (tenant_id, timer_id, threshold, outcome, "
                "scheduled_at, recorded_at, correlation_id) VALUES (:tenant, :timer, "
                ":threshold, :outcome, now(), now(), 'corr')"
            ),
            {"tenant": tenant_id, "timer": timer["id"], "threshold": threshold, "outcome": outcome},
        )


def build_world(engine, settings, api, tenant_id) -> World:
    """The hand-counted set; the figures it must give are in EXPECTED."""
    world = start_world(engine, api, tenant_id)
    fire_due(engine, settings)
    return finish_world(engine, world)


def start_world(engine, api, tenant_id) -> World:
    """What comes before the firing path runs (it fires every tenant's due timers)."""
    t = {}
    t["before"] = _start(engine, tenant_id, "before", T + timedelta(minutes=10))
    t["a1"] = _start(engine, tenant_id, "a1", T + timedelta(minutes=40))  # first partial hour
    t["a2"] = _start(engine, tenant_id, "a2", T + HOUR + timedelta(minutes=10), contract="premium")
    t["a3"] = _start(engine, tenant_id, "a3", T + DAY + 5 * HOUR)  # a whole day
    t["a4"] = _start(engine, tenant_id, "a4", T + DAY + 6 * HOUR)
    t["a5"] = _start(engine, tenant_id, "a5", T + DAY + 7 * HOUR)
    t["a6"] = _start(engine, tenant_id, "a6", T + 2 * DAY + HOUR + timedelta(minutes=10))
    t["after"] = _start(engine, tenant_id, "after", T + 2 * DAY + 2 * HOUR)
    _close(engine, tenant_id, t["before"], "complete", 10)
    _close(engine, tenant_id, t["a1"], "complete", 30)  # within, 30 s
    _close(engine, tenant_id, t["a2"], "complete", 90)  # late, 90 s
    _close(engine, tenant_id, t["a3"], "complete", 45)  # within, 45 s
    _close(engine, tenant_id, t["a4"], "cancel", 20, reason="lost")
    # a5 superseded by a5b: open, fired (both steps run), breached.
    t["a5b"] = _start(engine, tenant_id, "a5b", T + DAY + 8 * HOUR, lead_id="lead-a5")
    # a6: paused long after its due time, so breached; a paused timer is not overdue.
    assert api.post(f"/v1/timers/{t['a6']['id']}/pause", {"reason": "customer"}).status_code == 200
    return World(tenant_id, t)


def finish_world(engine, world: World) -> World:
    """What comes after: a7 is due and must stay unprocessed."""
    t, tenant_id = world.timers, world.tenant_id
    # a7: in the whole hour at the end, due and not yet processed: overdue.
    t["a7"] = _start(engine, tenant_id, "a7", T + 2 * DAY + timedelta(minutes=20))
    _warning(engine, tenant_id, t["a3"], 50, "SENT")
    _warning(engine, tenant_id, t["a4"], 50, "SKIPPED")
    _warning(engine, tenant_id, t["a5b"], 50, "SENT")
    _warning(engine, tenant_id, t["a5b"], 90, "SENT")
    _warning(engine, tenant_id, t["before"], 50, "SENT")
    return world


EXPECTED = {
    "started": 8,  # a1 a2 a3 a4 a5 a5b a6 a7
    "completed_within_sla": 2,  # a1 a3
    "completed_late": 1,  # a2
    "open_breached": 3,  # a5b (escalated), a6 (paused after due), a7 (due, not processed)
    "breached": 4,
    "compliance_percent": 33.33,  # 2 / (2 + 4)
    "cancelled": 2,  # a4, a5
    "superseded": 1,  # a5
    "active": 2,  # a5b a7
    "paused": 1,  # a6
    "time_to_complete_seconds": {"completed": 3, "p50": 45, "p90": 90},
    "escalations": [
        # a5b ran both; the five closed before firing skipped both.
        {"step": 1, "success": 1, "failed": 0, "skipped": 5},
        {"step": 2, "success": 1, "failed": 0, "skipped": 5},
    ],
    "warnings": {
        "sent": 3,
        "skipped": 1,
        "by_threshold": [
            {"threshold": 50, "sent": 2, "skipped": 1},
            {"threshold": 90, "sent": 1, "skipped": 0},
        ],
    },
}


def fold_everything(engine) -> int:
    """Fold until every tenant's position is past its last event. The fold stops
    at the horizon, which any open transaction on the server holds back (other
    test runs' too), so it may take a few rounds."""
    folded, deadline = 0, time.monotonic() + 30
    while True:
        folded += stats.fold_all(engine)
        with engine.connect() as conn:
            behind = conn.execute(
                text(
                    "SELECT count(*) FROM outbox_events e LEFT JOIN sla_stats_positions p "
                    "USING (tenant_id) WHERE p.tenant_id IS NULL OR (e.txid, e.id) > "
                    "(p.txid, p.event_id)"
                )
            ).scalar_one()
        if behind == 0:
            return folded
        assert time.monotonic() < deadline, f"{behind} events still not folded"
        time.sleep(0.05)


def get_stats(api, start=FROM, end=TO, **query) -> dict:
    response = api.get("/v1/stats", query_string={"from": iso(start), "to": iso(end), **query})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def figures(body: dict) -> dict:
    return {k: body[k] for k in EXPECTED}


@pytest.fixture
def world(engine, settings, api, tenant) -> World:
    return build_world(engine, settings, api, tenant[0])


def test_the_stats_match_the_hand_counted_set(api, world):
    body = get_stats(api)
    assert figures(body) == EXPECTED
    a7 = world.timers["a7"]
    assert body["overdue"]["count"] == 1
    assert datetime.fromisoformat(body["overdue"]["oldest_fire_at"]) == a7["due_at"]
    assert body["overdue"]["oldest_age_seconds"] > 0
    assert body["from"] == iso(FROM) and body["to"] == iso(TO)
    assert body["sla_contract_id"] is None


def test_the_rollup_gives_what_the_live_count_gives(api, engine, world):
    live = get_stats(api)
    assert fold_everything(engine) > 0
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT count(*) FROM sla_stats_rollup")).scalar_one()
    assert rows > 0
    folded = get_stats(api)
    assert figures(folded) == figures(live) == EXPECTED
    assert folded["overdue"]["count"] == live["overdue"]["count"] == 1
    # A second fold finds nothing new and changes nothing.
    assert fold_everything(engine) == 0
    assert figures(get_stats(api)) == EXPECTED


def test_the_rollup_is_read_for_whole_hours_and_days(api, engine, world):
    # A folded timer's own row no longer decides its figures: the rollup does.
    fold_everything(engine)
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE sla_timers SET breached = true WHERE id = ANY(:ids)"),
            {"ids": [world.timers["a3"]["id"], world.timers["a1"]["id"]]},
        )
    body = get_stats(api)
    # a3 is in a whole day (folded), a1 in the range's first minutes (live).
    assert body["completed_within_sla"] == 1
    assert body["completed_late"] == 2


def test_a_close_after_the_fold_counts_at_once_and_is_folded_once(api, engine, world):
    fold_everything(engine)
    a5b = world.timers["a5b"]
    _close(engine, world.tenant_id, a5b, "complete", 3600)  # late, an hour
    expected = {
        **EXPECTED,
        "completed_late": 2,
        "open_breached": 2,
        "breached": 4,
        "active": 1,
        "time_to_complete_seconds": {"completed": 4, "p50": 45, "p90": 3600},
    }
    assert figures(get_stats(api)) == expected  # live: not folded yet
    assert fold_everything(engine) > 0
    assert figures(get_stats(api)) == expected
    assert fold_everything(engine) == 0
    assert figures(get_stats(api)) == expected


def test_a_rebuild_gives_what_the_fold_gives(api, engine, world):
    fold_everything(engine)
    folded = get_stats(api)
    with engine.begin() as conn:
        stats.rebuild(conn, world.tenant_id)
    assert figures(get_stats(api)) == figures(folded) == EXPECTED


def test_one_contract(api, world):
    body = get_stats(api, sla_contract_id="premium")
    assert body["sla_contract_id"] == "premium"
    assert body["started"] == 1
    assert body["completed_late"] == 1
    assert body["compliance_percent"] == 0.0
    assert body["time_to_complete_seconds"] == {"completed": 1, "p50": 90, "p90": 90}
    assert body["escalations"] == [
        {"step": 1, "success": 0, "failed": 0, "skipped": 1},
        {"step": 2, "success": 0, "failed": 0, "skipped": 1},
    ]


def test_a_range_within_one_hour_is_counted_live(api, engine, world):
    fold_everything(engine)
    body = get_stats(api, T + timedelta(minutes=35), T + timedelta(minutes=45))
    assert body["started"] == 1  # a1
    assert body["completed_within_sla"] == 1


def test_an_empty_range_has_no_compliance(api, world):
    body = get_stats(api, FROM, FROM)
    assert body["started"] == 0
    assert body["compliance_percent"] is None
    assert body["time_to_complete_seconds"] == {"completed": 0, "p50": None, "p90": None}
    assert body["overdue"] == {"count": 0, "oldest_fire_at": None, "oldest_age_seconds": None}


def test_another_tenant_s_timers_never_count(
    api, other_api, engine, settings, tenant, other_tenant
):
    # Both tenants get the same set, at the same instants.
    mine = start_world(engine, api, tenant[0])
    other = start_world(engine, other_api, other_tenant[0])
    fire_due(engine, settings)
    finish_world(engine, mine)
    finish_world(engine, other)
    for fold in (False, True):
        if fold:
            fold_everything(engine)
        assert figures(get_stats(api)) == EXPECTED
        assert figures(get_stats(other_api)) == EXPECTED
    # Closing one tenant's timer changes only its own figures.
    _close(engine, other.tenant_id, other.timers["a7"], "cancel", 5)
    assert get_stats(api)["cancelled"] == 2
    assert get_stats(other_api)["cancelled"] == 3


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"to": "2026-01-01T00:00:00Z"}, "from"),
        ({"from": "2026-01-01T00:00:00Z"}, "to"),
        ({"from": "yesterday", "to": "2026-01-01T00:00:00Z"}, "from"),
        ({"from": "2026-01-01T00:00:00", "to": "2026-01-02T00:00:00Z"}, "from"),
        ({"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "from"),
        (
            {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "sla_contract_id": ""},
            "sla_contract_id",
        ),
        ({"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "extra": "1"}, "extra"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(api, query, field):
    assert_problem(api.get("/v1/stats", query_string=query), 422, field)


def test_stats_need_a_key(api):
    response = api.get("/v1/stats", key="", query_string={"from": iso(FROM), "to": iso(TO)})
    assert_problem(response, 401)


def test_stats_refuse_a_read_committed_transaction(engine, tenant):
    # The positions and the rollup they describe must share one snapshot.
    with engine.begin() as conn, pytest.raises(ValueError, match="REPEATABLE READ"):
        stats.stats(conn, tenant[0], FROM, TO)


def test_the_worker_s_minutely_actor_folds_every_tenant(api, world, other_tenant):
    fold_stats.fn()  # as the maintenance role, as the worker runs it
    with get_maintenance_engine().connect() as conn:
        folded = set(conn.execute(text("SELECT tenant_id FROM sla_stats_positions")).scalars())
    assert folded == {world.tenant_id, other_tenant[0]}
    assert figures(get_stats(api)) == EXPECTED
