"""Helpers for the HTTP API tests: a test client that sends one tenant's key,
the fields of a timer, and problem+json assertions. The fixtures that make
them (``app``, ``api``, ``other_api``) are in tests/integration/conftest.py."""

from __future__ import annotations

from typing import Any

TIMER_FIELDS = {
    "id",
    "lead_id",
    "sla_contract_id",
    "status",
    "processing_status",
    "started_at",
    "due_at",
    "window_seconds",
    "escalation_steps",
    "correlation_id",
    "idempotency_key",
    "attempts",
    "last_error",
    "next_attempt_at",
    "metadata",
    "cancel_reason",
    "created_at",
    "updated_at",
    "completed_at",
    "cancelled_at",
    "breached",
    "escalations",
    "contract_version",
    "contract_snapshot",
    "warning_thresholds",
    "paused_at",
    "pause_reason",
    "paused_seconds",
    "warnings",
}


class Api:
    """A Flask test client that sends one tenant's API key."""

    def __init__(self, client, key: str | None) -> None:
        self.client = client
        self.key = key

    def _headers(self, headers: dict[str, str] | None, key: str | None) -> dict[str, str]:
        key = self.key if key is None else key
        out = {"Authorization": f"Bearer {key}"} if key else {}
        return {**out, **(headers or {})}

    def get(self, path: str, *, key: str | None = None, headers=None, **kw: Any):
        return self.client.get(path, headers=self._headers(headers, key), **kw)

    def post(self, path: str, json: Any = None, *, key: str | None = None, headers=None, **kw):
        if json is not None:
            kw["json"] = json
        return self.client.post(path, headers=self._headers(headers, key), **kw)

    def put(self, path: str, json: Any = None, *, key: str | None = None, headers=None, **kw):
        if json is not None:
            kw["json"] = json
        return self.client.put(path, headers=self._headers(headers, key), **kw)

    def delete(self, path: str, *, key: str | None = None, headers=None, **kw: Any):
        return self.client.delete(path, headers=self._headers(headers, key), **kw)

    def contracts(self, *contract_ids: str) -> None:
        """Define contracts (a one-minute window, one step) so starts can name them:
        a start under an unknown contract is a 422."""
        for contract_id in contract_ids:
            body = {
                "name": contract_id,
                "window_seconds": 60,
                "escalation_steps": [{"step": 1, "after_seconds": 0, "action": "notify"}],
            }
            response = self.put(f"/v1/contracts/{contract_id}", body)
            assert response.status_code == 201, response.get_json()

    def start(self, **body: Any) -> dict:
        body.setdefault("lead_id", "lead-1")
        if "window_minutes" not in body:
            body.setdefault("window_seconds", 600)
        response = self.post("/v1/timers", body)
        assert response.status_code == 201, response.get_json()
        return response.get_json()


def assert_problem(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert {"type", "title", "status", "detail", "instance"} <= body.keys()
    assert body["status"] == status
    if field is not None:
        fields = [e["field"] for e in body["errors"]]
        assert field in fields, body["errors"]
        assert all(e["reason"] for e in body["errors"])
    return body
