"""Prompt start: every timer route that commits an event wakes webhook delivery
after its commit (the minute sweep would deliver anyway, but up to a minute late).
A replayed start writes nothing and wakes nothing; a repeated cancel or complete
wakes it needlessly, which costs one debounced Redis SET."""

from __future__ import annotations

import pytest

import web.timers


@pytest.fixture
def wakes(monkeypatch) -> list[int]:
    calls: list[int] = []
    monkeypatch.setattr(web.timers, "wake_delivery", lambda: calls.append(1))
    return calls


def test_every_timer_route_that_writes_an_event_wakes_delivery(api, wakes):
    first = api.start(lead_id="w-1", window_seconds=60)
    assert len(wakes) == 1
    response = api.post("/v1/timers/bulk", {"timers": [{"lead_id": "w-2", "window_seconds": 60}]})
    assert response.status_code == 201 and len(wakes) == 2
    assert api.post(f"/v1/timers/{first['id']}/cancel", {}).status_code == 200
    assert len(wakes) == 3
    assert api.post("/v1/leads/w-2/complete", {}).status_code == 200
    assert len(wakes) == 4

    # A replayed start writes nothing and wakes nothing.
    api.post("/v1/timers", {"lead_id": "w-3", "window_seconds": 60},
             headers={"Idempotency-Key": "k-1"})  # fmt: skip
    assert len(wakes) == 5
    api.post("/v1/timers", {"lead_id": "w-3", "window_seconds": 60},
             headers={"Idempotency-Key": "k-1"})  # fmt: skip
    assert len(wakes) == 5
