"""Hostile input, case by case: huge and deep bodies, invalid UTF-8, wrong types,
absurd windows and start times, a 10,000-step ladder, unicode lead ids and
duplicate keys. Each is answered quickly with a problem+json naming the field
and the reason (or the body's defect), never a 500, and writes nothing.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from tests.support.api import assert_problem
from web.parsing import MAX_DEPTH, MAX_ERRORS
from web.schemas import MAX_BULK, MAX_STEPS, MAX_WINDOW_SECONDS

OK = {"lead_id": "lead-1", "window_seconds": 60}
STEP = {"step": 1, "after_seconds": 0, "action": "notify"}
QUICK_SECONDS = 2.0


def with_(**changes):
    return {**OK, **changes}


def ladder(n: int) -> list[dict]:
    return [{"step": i, "after_seconds": i, "action": "notify"} for i in range(1, n + 1)]


def written(engine) -> tuple[int, int]:
    with engine.connect() as conn:
        counts = "SELECT (SELECT count(*) FROM sla_timers), (SELECT count(*) FROM outbox_events)"
        return tuple(conn.execute(text(counts)).one())


@pytest.fixture
def refused(api, engine):
    """Send a request and check the refusal: status, problem+json, the field and a
    reason (when given), a quick answer, and no timer or event written."""

    def check(send, status: int, field: str | None = None, reason: str = "") -> dict:
        before = written(engine)
        started = time.perf_counter()
        response = send()
        elapsed = time.perf_counter() - started
        body = assert_problem(response, status, field)
        if field is not None:
            reasons = [e["reason"] for e in body["errors"] if e["field"] == field]
            assert any(reason in r for r in reasons), (reason, body["errors"])
        else:
            assert reason in body["detail"], body
        assert "Traceback" not in response.get_data(as_text=True)
        assert elapsed < QUICK_SECONDS, f"took {elapsed:.2f} s"
        assert written(engine) == before
        return body

    return check


def post_json(api, path: str, body):
    return lambda: api.post(path, body)


def post_raw(api, path: str, data: bytes | str, content_type: str = "application/json"):
    return lambda: api.post(path, data=data, content_type=content_type)


# --------------------------------------------------------------------------- huge bodies


def test_a_body_over_the_limit_is_413_whatever_its_type(api, refused, settings):
    big = json.dumps(with_(metadata={"blob": "x" * settings.max_body_bytes}))
    refused(post_raw(api, "/v1/timers", big), 413, reason=str(settings.max_body_bytes))
    refused(post_raw(api, "/v1/timers", big, "text/plain"), 413)
    refused(post_raw(api, "/v1/timers/bulk", "[" * (settings.max_body_bytes + 1)), 413)


def test_huge_values_under_the_body_limit_are_422(api, refused):
    refused(post_json(api, "/v1/timers", with_(lead_id="x" * 500_000)), 422, "lead_id", "200")
    refused(
        post_json(api, "/v1/timers", with_(escalation_steps=[{**STEP, "action": "a" * 500_000}])),
        422,
        "escalation_steps.0.action",
        "100",
    )


def test_more_than_the_bulk_limit_is_422(api, refused):
    timers = [{"lead_id": str(i), "window_seconds": 60} for i in range(MAX_BULK + 1)]
    refused(post_json(api, "/v1/timers/bulk", {"timers": timers}), 422, "timers", str(MAX_BULK))


def test_a_million_bad_strings_get_a_bounded_answer(api, refused):
    body = refused(
        post_json(api, "/v1/timers", with_(metadata={"bad": ["\x00"] * 50_000})),
        422,
        "metadata.bad.0",
        "NUL",
    )
    assert len(body["errors"]) == MAX_ERRORS


# --------------------------------------------------------------------------- deep JSON


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("[" * 100_000 + "]" * 100_000, id="arrays"),
        pytest.param('{"a":' * 100_000 + "1" + "}" * 100_000, id="objects"),
        pytest.param(
            '{"lead_id": "x", "window_seconds": 5, "metadata": {"a": '
            + "[" * 50_000
            + "]" * 50_000
            + "}}",
            id="inside-metadata",
        ),
    ],
)
def test_json_nested_beyond_the_parser_is_400(api, refused, data):
    refused(post_raw(api, "/v1/timers", data), 400, reason="nested too deeply")


def deep(levels: int):
    value: object = 1
    for _ in range(levels):
        value = {"a": value}
    return value


def test_metadata_deeper_than_the_limit_is_422_naming_the_path(api, refused):
    # The body is level 0, so the 33rd level sits 32 levels below metadata (30 in a bulk item).
    body = with_(metadata=deep(MAX_DEPTH + 5))
    field = "metadata" + ".a" * MAX_DEPTH
    refused(post_json(api, "/v1/timers", body), 422, field, f"deeper than {MAX_DEPTH}")
    bulk = {"timers": [body]}
    field = "timers.0.metadata" + ".a" * (MAX_DEPTH - 2)
    refused(post_json(api, "/v1/timers/bulk", bulk), 422, field, f"deeper than {MAX_DEPTH}")


def test_metadata_within_the_limit_is_stored_intact(api):
    metadata = deep(MAX_DEPTH - 1)
    timer = api.start(metadata=metadata)
    assert api.get(f"/v1/timers/{timer['id']}").get_json()["metadata"] == metadata


# --------------------------------------------------------------------------- invalid UTF-8


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"lead_id": "\xff", "window_seconds": 5}', id="ff"),
        pytest.param(b'{"lead_id": "\xc0\xaf", "window_seconds": 5}', id="overlong"),
        pytest.param(b'{"lead_id": "\xed\xa0\x80", "window_seconds": 5}', id="encoded-surrogate"),
        pytest.param(b'{"lead_id": "\xe2\x82", "window_seconds": 5}', id="truncated-sequence"),
        pytest.param(b'{"lead_id": "caf\xe9", "window_seconds": 5}', id="latin-1"),
        pytest.param('{"lead_id": "a"}'.encode("utf-16"), id="utf-16"),
    ],
)
def test_a_body_that_is_not_utf8_is_400(api, refused, data):
    refused(post_raw(api, "/v1/timers", data), 400, reason="UTF-8")


def test_a_query_parameter_that_is_not_utf8_is_422(api, refused):
    refused(lambda: api.get("/v1/timers?lead_id=%FF"), 422, "lead_id", "UTF-8")
    refused(lambda: api.get("/v1/timers?lead_id=caf%E9"), 422, "lead_id", "UTF-8")


def test_a_lead_id_in_the_path_that_is_not_utf8_names_no_lead(api, engine):
    """Werkzeug decodes %FF to U+FFFD: without the check this would cancel the
    timers of the lead literally named "\ufffd"."""
    timer = api.start(lead_id="\ufffd")
    before = written(engine)
    for verb in ("cancel", "complete"):
        response = api.post(f"/v1/leads/%FF/{verb}")
        body = assert_problem(response, 422, "lead_id")
        assert "UTF-8" in body["errors"][0]["reason"]
    assert api.get(f"/v1/timers/{timer['id']}").get_json()["status"] == "ACTIVE"
    assert written(engine) == before
    # Its real name still reaches it.
    response = api.post("/v1/leads/" + urllib.parse.quote("\ufffd") + "/cancel")
    assert [t["id"] for t in response.get_json()["items"]] == [timer["id"]]


# --------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        (with_(lead_id=42), "lead_id", "valid string"),
        (with_(lead_id=["a"]), "lead_id", "valid string"),
        (with_(lead_id={"id": "a"}), "lead_id", "valid string"),
        (with_(lead_id=None), "lead_id", "valid string"),
        (with_(lead_id=True), "lead_id", "valid string"),
        (with_(sla_contract_id=7), "sla_contract_id", "valid string"),
        (with_(correlation_id=[]), "correlation_id", "valid string"),
        (with_(window_seconds="60"), "window_seconds", "valid integer"),
        (with_(window_seconds=True), "window_seconds", "valid integer"),
        (with_(window_seconds=[60]), "window_seconds", "valid integer"),
        (with_(window_seconds={"s": 60}), "window_seconds", "valid integer"),
        (with_(window_seconds=60.5), "window_seconds", "valid integer"),
        (with_(started_at=1_700_000_000), "started_at", "RFC 3339"),
        (with_(started_at=True), "started_at", "RFC 3339"),
        (with_(started_at=["2024-01-01T00:00:00Z"]), "started_at", "RFC 3339"),
        (with_(escalation_steps={"step": 1}), "escalation_steps", "valid list"),
        (with_(escalation_steps="notify"), "escalation_steps", "valid list"),
        (with_(escalation_steps=[1]), "escalation_steps.0", "valid dictionary"),
        (with_(escalation_steps=[None]), "escalation_steps.0", "valid dictionary"),
        (with_(escalation_steps=[{**STEP, "step": "1"}]), "escalation_steps.0.step", "integer"),
        (with_(escalation_steps=[{**STEP, "step": 1.5}]), "escalation_steps.0.step", "integer"),
        (with_(escalation_steps=[{**STEP, "action": 5}]), "escalation_steps.0.action", "string"),
        (with_(metadata=[]), "metadata", "valid dictionary"),
        (with_(metadata="x"), "metadata", "valid dictionary"),
        (with_(metadata=5), "metadata", "valid dictionary"),
        ([], "body", "JSON object"),
        ("timer", "body", "JSON object"),
        (5, "body", "JSON object"),
        (True, "body", "JSON object"),
    ],
)
def test_a_wrong_type_is_422_naming_the_field(api, refused, body, field, reason):
    refused(post_raw(api, "/v1/timers", json.dumps(body)), 422, field, reason)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"timers": {}}, "timers"),
        ({"timers": "x"}, "timers"),
        ({"timers": [1]}, "timers.0"),
        ({"timers": [[]]}, "timers.0"),
        ({"timers": [with_(window_seconds="60")]}, "timers.0.window_seconds"),
        ({"timers": None}, "timers"),
    ],
)
def test_a_wrong_type_in_a_bulk_start_names_the_item(api, refused, body, field):
    refused(post_json(api, "/v1/timers/bulk", body), 422, field)


def test_wrong_types_on_the_other_routes(api, engine):
    timer = api.start()
    before = written(engine)
    path = f"/v1/timers/{timer['id']}"
    assert_problem(api.post(f"{path}/cancel", {"reason": 5}), 422, "reason")
    assert_problem(api.post(f"{path}/cancel", data="[]", content_type="application/json"), 422)
    assert_problem(api.post("/v1/leads/x/cancel", {"sla_contract_id": 1}), 422, "sla_contract_id")
    assert_problem(api.get("/v1/timers?limit=1.5"), 422, "limit")
    assert_problem(api.get("/v1/timers?limit="), 422, "limit")
    assert api.get(path).get_json()["status"] == "ACTIVE"
    assert written(engine) == before


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("window", "field", "reason"),
    [
        ({"window_seconds": -1}, "window_seconds", "greater than 0"),
        ({"window_seconds": 0}, "window_seconds", "greater than 0"),
        ({"window_seconds": -(2**63)}, "window_seconds", "greater than 0"),
        ({"window_seconds": MAX_WINDOW_SECONDS + 1}, "window_seconds", "less than or equal"),
        ({"window_seconds": 2**63}, "window_seconds", "64-bit"),
        ({"window_seconds": 10**30}, "window_seconds", "less than or equal"),
        ({"window_seconds": -(10**30)}, "window_seconds", "greater than 0"),
        ({"window_seconds": 1e308}, "window_seconds", "less than or equal"),
        ({"window_seconds": -1e308}, "window_seconds", "greater than 0"),
        ({"window_minutes": -5}, "window_minutes", "greater than 0"),
        ({"window_minutes": MAX_WINDOW_SECONDS // 60 + 1}, "window_minutes", "less than or equal"),
        ({"window_minutes": 10**18}, "window_minutes", "less than or equal"),
        ({"window_seconds": None}, "window_seconds", "exactly one"),
        ({"window_seconds": 60, "window_minutes": 1}, "window_seconds", "exactly one"),
    ],
)
def test_negative_and_gigantic_windows_are_422(api, refused, window, field, reason):
    body = {"lead_id": "lead-1", **window}
    refused(post_json(api, "/v1/timers", body), 422, field, reason)
    refused(post_json(api, "/v1/timers/bulk", {"timers": [body]}), 422, f"timers.0.{field}")


def test_a_number_too_long_to_parse_is_400(api, refused):
    data = '{"lead_id": "a", "window_seconds": 1' + "0" * 5000 + "}"
    refused(post_raw(api, "/v1/timers", data), 400, reason="not valid JSON")


def test_integers_beyond_64_bits_in_metadata_are_422(api, refused):
    """They used to reach the JSON encoder on the way to the database: a 500."""
    for value in (2**63, -(2**63) - 1, 10**40):
        body = with_(metadata={"n": {"deep": [value]}})
        refused(post_json(api, "/v1/timers", body), 422, "metadata.n.deep.0", "64-bit")
        refused(post_json(api, "/v1/timers/bulk", {"timers": [body]}), 422)


def test_whole_numbers_and_the_extreme_windows_are_accepted(api):
    assert api.start(lead_id="a", window_seconds=60.0)["window_seconds"] == 60
    assert api.start(lead_id="b", window_minutes=2.0)["window_seconds"] == 120
    timer = api.start(lead_id="c", window_seconds=MAX_WINDOW_SECONDS, metadata={"n": 2**63 - 1})
    due = datetime.fromisoformat(timer["due_at"]) - datetime.fromisoformat(timer["started_at"])
    assert due == timedelta(seconds=MAX_WINDOW_SECONDS)
    assert api.get(f"/v1/timers/{timer['id']}").get_json()["metadata"] == {"n": 2**63 - 1}


# --------------------------------------------------------------------------- started_at


def _days_ahead(days: int) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


@pytest.mark.parametrize(
    ("started_at", "reason"),
    [
        ("0001-01-01T00:00:00Z", "after 1970"),
        ("1969-12-31T23:59:59Z", "after 1970"),
        ("1000-06-15T12:00:00+05:30", "after 1970"),
        ("9999-12-31T23:59:59Z", "366 days"),
        ("2999-01-01T00:00:00Z", "366 days"),
        (_days_ahead(367), "366 days"),
        # Valid RFC 3339, but outside datetime's range once in UTC (they were 500s).
        ("0001-01-01T00:00:00+01:00", "range of dates"),
        ("9999-12-31T23:59:59-01:00", "range of dates"),
        ("0000-01-01T00:00:00Z", "not a valid date-time"),
        ("10000-01-01T00:00:00Z", "RFC 3339"),
        ("-0001-01-01T00:00:00Z", "RFC 3339"),
        ("2024-01-01T00:00:00+24:00", "not a valid date-time"),
    ],
)
def test_far_past_and_far_future_starts_are_422(api, refused, started_at, reason):
    refused(post_json(api, "/v1/timers", with_(started_at=started_at)), 422, "started_at", reason)
    bulk = {"timers": [with_(started_at=started_at)]}
    refused(post_json(api, "/v1/timers/bulk", bulk), 422, "timers.0.started_at", reason)


def test_the_edges_of_the_start_range_are_accepted(api):
    timer = api.start(lead_id="epoch", started_at="1970-01-01T00:00:00Z", window_seconds=1)
    assert timer["due_at"] == "1970-01-01T00:00:01Z"
    ahead = _days_ahead(365)
    last = {"step": 1, "after_seconds": MAX_WINDOW_SECONDS, "action": "notify"}
    timer = api.start(
        lead_id="ahead",
        started_at=ahead,
        window_seconds=MAX_WINDOW_SECONDS,
        escalation_steps=[last],
    )
    assert datetime.fromisoformat(timer["started_at"]) == datetime.fromisoformat(ahead)


# --------------------------------------------------------------------------- ladders


def test_a_10000_step_ladder_is_refused_quickly(api, refused):
    body = refused(
        post_json(api, "/v1/timers", with_(escalation_steps=ladder(10_000))),
        422,
        "escalation_steps",
        f"at most {MAX_STEPS}",
    )
    assert len(body["errors"]) == 1
    bulk = {"timers": [with_(escalation_steps=ladder(10_000))]}
    refused(post_json(api, "/v1/timers/bulk", bulk), 422, "timers.0.escalation_steps")


def test_10000_bad_steps_get_a_bounded_answer(api, refused):
    steps = [{"step": 0, "after_seconds": -1, "action": ""}] * 10_000
    body = refused(post_json(api, "/v1/timers", with_(escalation_steps=steps)), 422)
    assert 1 <= len(body["errors"]) <= MAX_ERRORS


def test_the_ladder_limit_is_exact(api, refused):
    refused(
        post_json(api, "/v1/timers", with_(escalation_steps=ladder(MAX_STEPS + 1))),
        422,
        "escalation_steps",
    )
    assert len(api.start(escalation_steps=ladder(MAX_STEPS))["escalation_steps"]) == MAX_STEPS


# --------------------------------------------------------------------------- unicode lead ids

UNICODE_LEADS = [
    "caf\u00e9",  # NFC
    "cafe\u0301",  # the same text in NFD: another lead
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",  # one emoji, five code points
    "\u05e9\u05dc\u05d5\u05dd",  # right to left
    "\u4f60\u597d",
    "a/b?c#d%e f+g",  # characters that mean something in a URL
    "\ufeff\u200b\u2028",  # invisible ones
    "\ufffd",
    "\U0010ffff",
    "\U0001f600" * 200,  # the longest lead id: 200 characters, 800 bytes
]


def test_unicode_lead_ids_round_trip_exactly(api):
    started = {lead: api.start(lead_id=lead)["id"] for lead in UNICODE_LEADS}
    assert len(set(started.values())) == len(UNICODE_LEADS)
    for lead, timer_id in started.items():
        assert api.get(f"/v1/timers/{timer_id}").get_json()["lead_id"] == lead
        listed = api.get("/v1/timers?lead_id=" + urllib.parse.quote(lead, safe=""))
        assert [t["id"] for t in listed.get_json()["items"]] == [timer_id], lead
    # The lead routes reach exactly that lead (NFC and NFD are two leads).
    for lead, timer_id in started.items():
        response = api.post("/v1/leads/" + urllib.parse.quote(lead, safe="") + "/cancel")
        assert [t["id"] for t in response.get_json()["items"]] == [timer_id], lead


@pytest.mark.parametrize(
    ("lead", "reason"),
    [
        ("\U0001f600" * 201, "at most 200"),
        ("", "at least 1"),
        ("a\x00b", "NUL"),
    ],
)
def test_unicode_lead_ids_over_the_limits_are_422(api, refused, lead, reason):
    refused(post_json(api, "/v1/timers", with_(lead_id=lead)), 422, "lead_id", reason)


def test_an_unpaired_surrogate_lead_id_is_422(api, refused):
    data = '{"lead_id": "\\udc00x", "window_seconds": 5}'
    refused(post_raw(api, "/v1/timers", data), 422, "lead_id", "surrogate")


# --------------------------------------------------------------------------- duplicate keys


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ('{"lead_id": "a", "window_seconds": 5, "lead_id": "b"}', "lead_id"),
        ('{"lead_id": "a", "window_seconds": 5, "lead\\u005fid": "b"}', "lead_id"),
        ('{"lead_id": "a", "window_seconds": 5, "metadata": {"k": 1, "k": 2}}', "k"),
        ('{"lead_id": "a", "window_seconds": 5, "metadata": {"x": [{"k": 1, "k": 1}]}}', "k"),
        (
            '{"lead_id": "a", "window_seconds": 5, "escalation_steps": '
            '[{"step": 1, "after_seconds": 0, "action": "a", "step": 2}]}',
            "step",
        ),
    ],
)
def test_duplicate_keys_are_400(api, refused, data, key):
    refused(post_raw(api, "/v1/timers", data), 400, reason=f"duplicate object key {key!r}")
    bulk = '{"timers": [' + data + "]}"
    refused(post_raw(api, "/v1/timers/bulk", bulk), 400, reason="duplicate object key")


def test_duplicate_keys_on_the_other_routes_are_400(api, engine):
    timer = api.start()
    before = written(engine)
    response = api.post(
        f"/v1/timers/{timer['id']}/cancel",
        data='{"reason": "a", "reason": "b"}',
        content_type="application/json",
    )
    assert "duplicate" in assert_problem(response, 400)["detail"]
    assert api.get(f"/v1/timers/{timer['id']}").get_json()["status"] == "ACTIVE"
    assert written(engine) == before


def test_a_repeated_query_parameter_is_422(api, refused):
    api.start()
    refused(lambda: api.get("/v1/timers?limit=1&limit=200"), 422, "limit", "more than once")
    refused(
        lambda: api.post("/v1/leads/lead-1/cancel?sla_contract_id=a&sla_contract_id=default"),
        422,
        "sla_contract_id",
        "more than once",
    )


# --------------------------------------------------------------------------- headers


@pytest.mark.parametrize("path", ["/v1/timers", "/v1/timers/bulk"])
@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Correlation-ID", ""), ("X-Correlation-ID", "c" * 201), ("Idempotency-Key", "k" * 256)],
)
def test_a_bad_header_is_422_even_when_the_body_makes_it_moot(api, refused, path, name, value):
    """The body's correlation_id wins over the header, yet the header is checked
    (schemathesis found an empty one accepted)."""
    item = with_(correlation_id="from-body")
    body = item if path == "/v1/timers" else {"timers": [item]}
    refused(lambda: api.post(path, body, headers={name: value}), 422, name)
