"""The routine in a burst: a full claim asks for help before its batch is
written, and the garbage collector is paused only while batches are in
progress."""

from __future__ import annotations

import dataclasses
import gc

from sqlalchemy import text

from tasks.firing import fire_due
from tests.support.factories import overdue, start_timer


def _step_count(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM sla_escalation_events")).scalar()


def test_a_full_claim_asks_for_help_once_before_its_batch_is_written(engine, settings, tenant):
    for i in range(5):
        start_timer(engine, tenant[0], started_at=overdue(), lead_id=f"lead-{i}")
    seen: list[int] = []
    report = fire_due(
        engine,
        dataclasses.replace(settings, batch_size=2),
        on_full_batch=lambda: seen.append(_step_count(engine)),
    )
    assert report.steps == 5
    assert seen == [0]


def test_a_batch_that_is_not_full_asks_for_no_help(engine, settings, tenant):
    start_timer(engine, tenant[0], started_at=overdue())
    seen: list[int] = []
    assert fire_due(engine, settings, on_full_batch=lambda: seen.append(1)).steps == 1
    assert seen == []


def test_help_that_fails_costs_the_batch_nothing(engine, settings, tenant):
    for i in range(2):
        start_timer(engine, tenant[0], started_at=overdue(), lead_id=f"lead-{i}")

    def broken():
        raise ConnectionError("broker down")

    report = fire_due(engine, dataclasses.replace(settings, batch_size=2), on_full_batch=broken)
    assert (report.steps, report.failures, report.released) == (2, 0, 0)


def test_the_collector_is_paused_during_a_batch_and_restored_after(engine, settings, tenant):
    for i in range(2):
        start_timer(engine, tenant[0], started_at=overdue(), lead_id=f"lead-{i}")
    during: list[bool] = []
    fire_due(
        engine,
        dataclasses.replace(settings, batch_size=1),
        on_full_batch=lambda: during.append(gc.isenabled()),
    )
    assert during == [False]
    assert gc.isenabled()
    gc.disable()
    try:
        start_timer(engine, tenant[0], started_at=overdue(), lead_id="third")
        assert fire_due(engine, settings).steps == 1
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()
