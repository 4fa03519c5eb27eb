"""/openapi.json says what the server enforces: the rules JSON Schema cannot
express are stated in ``x-constraints``, and data that keeps them is accepted."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.support import schemathesis_hooks as hooks


@pytest.fixture
def document(app) -> dict[str, Any]:
    return app.test_client().get("/openapi.json").get_json()


def _rules(node: Any, name: str = "") -> list[tuple[str, str]]:
    """(name of the property or parameter, rule) of every x-constraint."""
    found = []
    if isinstance(node, dict):
        found += [(name, r["rule"]) for r in node.get("x-constraints", ())]
        for key, child in node.items():
            # A parameter's schema is named by the parameter.
            found += _rules(child, node["name"] if key == "schema" and "name" in node else key)
    elif isinstance(node, list):
        for child in node:
            found += _rules(child, name)
    return found


def test_the_rules_json_schema_cannot_express_are_stated(document):
    rules = _rules(document)
    assert {
        ("escalation_steps", "unique"),
        ("escalation_steps", "non-decreasing"),
        ("started_at", "date-time-range"),
        ("timers", "unique"),
        ("sla_contract_id", "equal-when-both-given"),
        ("cursor", "issued-by-api"),
        ("metadata", "integer-range"),
        ("metadata", "max-depth"),
    } <= set(rules)
    # Each stated rule has a description, and the fuzzing run knows how to keep it.
    assert {rule for _, rule in rules} <= hooks.RULES.keys()
    for node in _nodes_with_constraints(document):
        assert node.get("description"), node
        assert all(r["description"] for r in node["x-constraints"])


def _nodes_with_constraints(node: Any) -> list[dict]:
    if isinstance(node, dict):
        own = [node] if "x-constraints" in node else []
        return own + [n for child in node.values() for n in _nodes_with_constraints(child)]
    if isinstance(node, list):
        return [n for child in node for n in _nodes_with_constraints(child)]
    return []


def _case(query: dict | None = None) -> Any:
    return SimpleNamespace(query=query or {}, headers={}, path_parameters={})


def _body_schema(document, path: str, method: str = "post") -> Any:
    return document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]


def test_a_body_that_breaks_every_stated_rule_is_refused_and_accepted_once_kept(api, document):
    ladder = [
        {"step": 2, "after_seconds": 0, "action": "notify"},
        {"step": 2, "after_seconds": 60, "action": "page"},  # repeated number
        {"step": 3, "after_seconds": 30, "action": "call"},  # fires before step 2's 60 s
    ]
    timer = {
        "lead_id": "lead-doc",
        "window_seconds": 60,
        "started_at": "2025-01-01T23:59:60Z",  # a leap second
        "escalation_steps": ladder,
        "metadata": {
            "big": 2**70,
            "deep": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
        },
    }
    bulk = {"timers": [timer, dict(timer, metadata={})]}  # the same lead and contract twice
    assert api.post("/v1/timers/bulk", bulk).status_code == 422

    kept = hooks.keep(document, _body_schema(document, "/v1/timers/bulk"), bulk, _case())

    response = api.post("/v1/timers/bulk", kept)
    assert response.status_code == 201, response.get_json()
    steps = response.get_json()["items"][0]["escalation_steps"]
    assert len({s["step"] for s in steps}) == 3


def test_a_contract_in_the_body_agrees_with_the_query_once_kept(api, document):
    path = "/v1/leads/{lead_id}/cancel"
    body = {"sla_contract_id": "gold"}
    assert api.post("/v1/leads/l/cancel?sla_contract_id=silver", body).status_code == 422
    kept = hooks.keep(
        document, _body_schema(document, path), body, _case({"sla_contract_id": "silver"})
    )
    assert api.post("/v1/leads/l/cancel?sla_contract_id=silver", kept).status_code == 200


def test_a_cursor_the_api_could_have_issued_is_accepted(api, document):
    (cursor,) = [
        p for p in document["paths"]["/v1/timers"]["get"]["parameters"] if p["name"] == "cursor"
    ]
    assert api.get("/v1/timers?cursor=not-a-cursor").status_code == 422
    kept = hooks.keep(document, cursor["schema"], "not-a-cursor", _case())
    assert api.get("/v1/timers", query_string={"cursor": kept}).status_code == 200
