"""PUT/GET/DELETE /v1/calendars/{calendar_id} and GET /v1/calendars: a tenant's
business-hours calendars, validated by models.calendars (docs/contracts.md).
Real PostgreSQL."""

from __future__ import annotations

import pytest

from tests.support.api import assert_problem

BERLIN = {
    "timezone": "Europe/Berlin",
    "weekly_hours": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
    "holidays": ["2026-12-24"],
    "holiday_country": "DE",
    "holiday_subdivision": "BY",
}
STEPS = [{"step": 1, "after_seconds": 0, "action": "notify"}]


def test_put_creates_then_replaces_and_get_reads_it_back(api):
    created = api.put("/v1/calendars/office", BERLIN)
    assert created.status_code == 201, created.get_json()
    assert created.headers["Location"] == "/v1/calendars/office"
    body = created.get_json()
    assert body["calendar_id"] == "office"
    assert body["weekly_hours"]["mon"] == [["09:00", "17:00"]]
    assert body["weekly_hours"]["sat"] == []  # every day is stated once stored
    assert body["holidays"] == ["2026-12-24"] and body["holiday_subdivision"] == "BY"

    replaced = api.put("/v1/calendars/office", {**BERLIN, "timezone": "America/New_York"})
    assert replaced.status_code == 200
    got = api.get("/v1/calendars/office").get_json()
    assert got["timezone"] == "America/New_York"
    assert got["created_at"] == body["created_at"] and got["updated_at"] >= body["updated_at"]


def test_the_list_pages_by_id(api):
    for name in ("c", "a", "b"):
        assert api.put(f"/v1/calendars/{name}", BERLIN).status_code == 201
    first = api.get("/v1/calendars?limit=2").get_json()
    assert [c["calendar_id"] for c in first["items"]] == ["a", "b"]
    rest = api.get(f"/v1/calendars?limit=2&after={first['next_after']}").get_json()
    assert [c["calendar_id"] for c in rest["items"]] == ["c"] and rest["next_after"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**BERLIN, "weekly_hours": {}}, "weekly_hours"),  # no working time at all
        ({**BERLIN, "weekly_hours": {"mon": []}}, "weekly_hours"),
        ({**BERLIN, "timezone": "Mars/Olympus"}, "timezone"),
        ({**BERLIN, "weekly_hours": {"mon": [["17:00", "25:00"]]}}, "weekly_hours.mon.0.1"),
        (
            {**BERLIN, "weekly_hours": {"mon": [["09:00", "12:00"], ["11:00", "13:00"]]}},
            "weekly_hours.mon[1]",
        ),
        ({**BERLIN, "weekly_hours": {"mon": [["09:00"]]}}, "weekly_hours.mon.0"),
        (
            {**BERLIN, "weekly_hours": {"someday": [["09:00", "10:00"]]}},
            "weekly_hours.someday.[key]",
        ),
        ({**BERLIN, "holidays": ["2026-02-30"]}, "holidays[0]"),
        ({**BERLIN, "holiday_country": "XX"}, "holiday_country"),
        ({k: v for k, v in BERLIN.items() if k != "timezone"}, "timezone"),
    ],
)
def test_an_unusable_calendar_is_a_422_naming_the_field(api, body, field):
    response = api.put("/v1/calendars/bad", body)
    problem = assert_problem(response, 422)
    assert field in [e["field"] for e in problem["errors"]], problem["errors"]
    assert api.get("/v1/calendars/bad").status_code == 404


def test_delete_removes_it_and_a_second_delete_is_a_404(api):
    api.put("/v1/calendars/gone", BERLIN)
    assert api.delete("/v1/calendars/gone").status_code == 204
    assert_problem(api.get("/v1/calendars/gone"), 404)
    assert_problem(api.delete("/v1/calendars/gone"), 404)


def test_a_calendar_a_live_contract_names_cannot_be_deleted(api):
    api.put("/v1/calendars/office", BERLIN)
    contract = {"name": "Gold", "window_minutes": 120, "calendar_id": "office"}
    for contract_id in ("gold", "silver"):
        put = api.put(f"/v1/contracts/{contract_id}", {**contract, "escalation_steps": STEPS})
        assert put.status_code == 201, put.get_json()

    problem = assert_problem(api.delete("/v1/calendars/office"), 409)
    assert "gold" in problem["detail"] and "silver" in problem["detail"]

    # A later version without it frees it from one; retiring frees the other.
    api.put("/v1/contracts/gold", {"name": "Gold", "window_minutes": 60, "escalation_steps": STEPS})
    problem = assert_problem(api.delete("/v1/calendars/office"), 409)
    assert "gold" not in problem["detail"] and "silver" in problem["detail"]
    assert api.delete("/v1/contracts/silver").status_code == 204
    assert api.delete("/v1/calendars/office").status_code == 204


def test_a_running_timer_keeps_its_copy_of_a_replaced_calendar(api):
    api.put("/v1/calendars/office", BERLIN)
    timer = api.start(lead_id="lead-cal", calendar_id="office", window_minutes=120)
    api.put("/v1/calendars/office", {**BERLIN, "timezone": "UTC"})
    api.delete("/v1/calendars/office")
    again = api.get(f"/v1/timers/{timer['id']}").get_json()
    assert again["due_at"] == timer["due_at"]


def test_an_id_the_database_cannot_store_is_a_422(api):
    assert_problem(api.put("/v1/calendars/a%00b", BERLIN), 422, "calendar_id")
