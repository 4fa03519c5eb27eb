"""The per-tenant write limit: 429 problem+json with Retry-After, shared by
every API process through Redis, and out of the way when Redis is down."""

from __future__ import annotations

import dataclasses

import pytest

from tests.support.api import Api, assert_problem
from web import create_app

START = {"lead_id": "lead", "window_seconds": 600}


# An hour, not a minute: no test here comes near the end of its window, whether
# the window starts at the tenant's first write (limits' sliding-window counter
# in Redis, as now) or on a wall-clock boundary (a fixed window).
LIMIT = "3/hour"


@pytest.fixture
def limited(engine, settings):
    return dataclasses.replace(settings, rate_limit=LIMIT)


def test_writes_past_the_limit_get_429_with_retry_after(limited, tenant, other_tenant):
    app = create_app(limited)
    api, other = Api(app.test_client(), tenant[1]), Api(app.test_client(), other_tenant[1])
    timer = api.start(lead_id="a")
    api.post(
        "/v1/timers/bulk",
        {"timers": [{"lead_id": f"b{i}", "window_seconds": 60} for i in range(5)]},
    )
    assert api.post(f"/v1/timers/{timer['id']}/complete").status_code == 200

    refused = api.post("/v1/timers", START)
    problem = assert_problem(refused, 429)
    assert problem["type"].endswith("rate-limited")
    assert problem["limit"] == LIMIT
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    # Reads are not limited, and nothing was written by the refused start.
    listed = api.get("/v1/timers?lead_id=lead").get_json()["items"]
    assert listed == []
    # Each tenant has its own budget.
    assert other.post("/v1/timers", START).status_code == 201


def test_the_budget_is_shared_by_every_api_process(limited, tenant):
    first, second = (Api(create_app(limited).test_client(), tenant[1]) for _ in range(2))
    for i in range(3):
        first.start(lead_id=f"l{i}")
    assert_problem(second.post("/v1/timers", START), 429)


def test_writes_go_through_when_the_limit_store_is_down(limited, tenant):
    down = dataclasses.replace(limited, redis_url="redis://127.0.0.1:1/0", redis_timeout_seconds=1)
    api = Api(create_app(down).test_client(), tenant[1])
    for i in range(5):  # over the limit, but Redis cannot count: let writes through
        api.start(lead_id=f"l{i}")


def test_the_openapi_document_lists_429_on_write_routes_only(engine):
    paths = create_app().test_client().get("/openapi.json").get_json()["paths"]
    assert "429" in paths["/v1/timers"]["post"]["responses"]
    assert "429" in paths["/v1/timers/{timer_id}/cancel"]["post"]["responses"]
    assert "429" not in paths["/v1/timers"]["get"]["responses"]
