"""Every request body and every response of /openapi.json carries an example
(web/examples.py), and every example is valid: against the document's own schema
for it, and, for request bodies, against the model the route validates with,
cross-field rules included."""

from __future__ import annotations

import json
from typing import Any

import jsonschema_rs
import pytest

METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    from web import create_app

    return create_app().test_client().get("/openapi.json").get_json()


def _media(document) -> list[tuple[str, str, dict]]:
    """(operation, what, media type object) of every body and response with content."""
    found = []
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            name = f"{method.upper()} {path}"
            for media_type, media in op.get("requestBody", {}).get("content", {}).items():
                found.append((name, f"request body ({media_type})", media))
            for status, response in op["responses"].items():
                for media_type, media in response.get("content", {}).items():
                    found.append((name, f"{status} ({media_type})", media))
    return found


def test_every_request_body_and_response_has_an_example(document):
    media = _media(document)
    assert len(media) > 200  # the walk found the document's operations
    missing = [f"{op}: {what}" for op, what, m in media if "example" not in m]
    assert not missing, "no example for:\n" + "\n".join(missing)


def test_every_example_matches_the_documents_schema(document):
    wrong = []
    for op, what, media in _media(document):
        # The schema's $refs point into the document's components.
        schema = {"components": document["components"], **media["schema"]}
        errors = [
            e.message for e in jsonschema_rs.validator_for(schema).iter_errors(media["example"])
        ]
        if errors:
            wrong.append(f"{op}: {what}: {errors[:3]}")
    assert not wrong, "\n".join(wrong)


def test_every_request_example_is_accepted_by_its_model(app):
    from web.examples import request_example
    from web.openapi import _operations

    checked = 0
    for path, method, op in _operations(app):
        if op.body is None:
            continue
        example = request_example(op.body)
        op.body.model_validate_json(json.dumps(example))  # strict, as the route parses
        cross = getattr(op.body, "cross_field_errors", None)
        assert not (cross and cross(example)), (method, path, cross(example))
        checked += 1
    assert checked >= 15


def test_the_request_examples_are_accepted_by_the_api(engine, settings, tenant):
    """What a reader copies from /docs works (and the fuzzing run's examples phase,
    which sends them, sees them accepted): every operation without path parameters
    answers its example with a 2xx."""
    import dataclasses

    from web import create_app
    from web.examples import request_example
    from web.openapi import _operations

    app = create_app(dataclasses.replace(settings, admin_token="examples", rate_limit=None))
    client = app.test_client()
    sent = 0
    for path, method, op in _operations(app):
        if op.body is None or "{" in path:
            continue
        key = "examples" if op.auth == "admin" else tenant[1]
        response = client.open(
            path,
            method=method.upper(),
            json=request_example(op.body),
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code < 300, (method, path, response.get_json())
        sent += 1
    assert sent >= 5


def test_a_problem_example_names_its_status_and_the_operations_path(document):
    op = document["paths"]["/v1/timers/{timer_id}/cancel"]["post"]
    example = op["responses"]["404"]["content"]["application/problem+json"]["example"]
    assert example["status"] == 404
    assert example["instance"].startswith("/v1/timers/") and "{" not in example["instance"]
    invalid = op["responses"]["422"]["content"]["application/problem+json"]["example"]
    assert invalid["errors"] and invalid["errors"][0]["field"]
