"""Delivery wakes from the web process's waker thread (web/wakes.py): a start's
request only signals it, and the wake still comes after the start's commit."""

from __future__ import annotations

import threading
import time

from sqlalchemy import text

from web.wakes import Waker


def _wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_a_start_wakes_delivery_after_its_started_event_is_committed(api, engine, monkeypatch):
    import tasks.delivery

    seen: list[int] = []

    def wake() -> bool:
        # What another connection sees when the wake is sent: the event committed.
        with engine.connect() as conn:
            seen.append(
                conn.execute(
                    text(
                        "SELECT count(*) FROM outbox_events WHERE event_type = 'sla.timer.started'"
                    )
                ).scalar_one()
            )
        return True

    monkeypatch.setattr(tasks.delivery, "wake_delivery", wake)
    api.start(lead_id="wake-1", window_seconds=600)
    assert _wait_for(lambda: seen), "no wake after the start"
    assert seen[0] == 1


def test_a_signal_during_a_wake_gets_a_wake_of_its_own(monkeypatch):
    import tasks.delivery

    calls: list[float] = []
    entered, release = threading.Event(), threading.Event()

    def wake() -> bool:
        calls.append(time.monotonic())
        entered.set()
        release.wait(5)
        return True

    monkeypatch.setattr(tasks.delivery, "wake_delivery", wake)
    waker = Waker(min_interval_s=0)
    waker.signal()
    assert entered.wait(5)
    # Commits signalling while the wake is in flight: it began before them,
    # so they share one more wake after it, and only one.
    for _ in range(10):
        waker.signal()
    release.set()
    assert _wait_for(lambda: len(calls) == 2)
    time.sleep(0.1)
    assert len(calls) == 2
    waker.flush()
