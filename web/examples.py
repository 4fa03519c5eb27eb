"""An example for every request body and response of the OpenAPI document.

``REQUESTS`` and ``RESPONSES`` map a model's name to one example value, which
web/openapi.py puts beside the model's schema in each operation that sends or
answers it (a model's own ``examples``, as CalendarPut and ContractPut state them,
come first). Response examples are dumped through their model, so they read exactly
as the API serializes; tests/integration/test_openapi_examples.py validates every
example against its model and checks that no operation is left without one.
Problem examples are made per operation and status by ``problem_example``.

Names, not classes, are the keys: a model defined in another module (the ops
page's, the reports') needs no import here.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from pydantic import BaseModel

from .problems import problem_type

TENANT = "6c0e2a4e-5b1d-4c3f-9a57-2f1e8d7c6b5a"
TIMER = "0b7d1c9e-3f2a-4e8b-9c6d-5a4f3e2d1c0b"
TIMER_2 = "1c8e2daf-4a3b-4f9c-8d7e-6b5a4f3e2d1c"
WEBHOOK = "7f3a9b2c-1d4e-4a5b-8c6d-9e0f1a2b3c4d"
STARTED = "2026-03-02T09:00:00Z"
DUE = "2026-03-02T09:30:00Z"
LATER = "2026-03-02T09:30:01Z"

LADDER = [
    {"step": 1, "after_seconds": 0, "action": "notify", "target": "owner"},
    {"step": 2, "after_seconds": 600, "action": "reassign", "target": "team-lead"},
]
TIMER_START = {
    "lead_id": "lead-42",
    "window_minutes": 30,
    "escalation_steps": LADDER,
    "metadata": {"crm": "hubspot", "owner": "ana@example.com"},
}

# ------------------------------------------------------------------- requests

REQUESTS: dict[str, Any] = {
    "TimerCreate": TIMER_START,
    "TimerBulkCreate": {
        "timers": [
            {"lead_id": "lead-43", "window_minutes": 30},
            {"lead_id": "lead-44", "window_seconds": 3600, "correlation_id": "import-7"},
        ]
    },
    "CancelRequest": {"reason": "lead merged into lead-41"},
    "CompleteRequest": {},
    "LeadCancelRequest": {"reason": "lead closed"},
    "LeadCompleteRequest": {},
    "PauseRequest": {"reason": "waiting on the customer"},
    "ResumeRequest": {},
    "TenantCreate": {"name": "acme"},
    "WebhookCreate": {
        # An address, not a name: the API resolves a name when subscribing.
        "url": "https://93.184.215.14/hooks/sla",
        "event_types": ["sla.timer.due", "sla.escalation.triggered"],
        "description": "CRM escalations",
    },
    "WebhookUpdate": {"enabled": True, "description": "CRM escalations (v2)"},
    "RotateSecretRequest": {"grace_seconds": 86400},
    "ReplayRequest": {
        "since": "2026-03-01T00:00:00Z",
        "until": "2026-03-02T00:00:00Z",
        "event_types": ["sla.timer.due"],
    },
    "LeadEventCreate": {
        "event_id": "crm-1001",
        "type": "lead.qualified",
        "lead_id": "lead-88",
        "occurred_at": STARTED,
        "window_minutes": 15,
    },
    "LeadEventBulkCreate": {
        "events": [
            {
                "event_id": "crm-1002",
                "type": "lead.qualified",
                "lead_id": "lead-89",
                "window_minutes": 15,
            },
            {"event_id": "crm-1003", "type": "lead.contacted", "lead_id": "lead-88"},
        ]
    },
}

# ------------------------------------------------------------------ responses

_TIMER = {
    "id": TIMER,
    "lead_id": "lead-42",
    "sla_contract_id": "default",
    "status": "ACTIVE",
    "processing_status": "PENDING",
    "started_at": STARTED,
    "due_at": DUE,
    "window_seconds": 1800,
    "escalation_steps": LADDER,
    "correlation_id": "req-5f2c9a",
    "idempotency_key": "lead-42-first-contact",
    "attempts": 0,
    "last_error": None,
    "next_attempt_at": None,
    "metadata": {"crm": "hubspot", "owner": "ana@example.com"},
    "cancel_reason": None,
    "created_at": STARTED,
    "updated_at": STARTED,
    "completed_at": None,
    "cancelled_at": None,
    "breached": None,
    "escalations": [],
    "contract_version": None,
    "contract_snapshot": None,
    "warning_thresholds": [],
    "paused_at": None,
    "pause_reason": None,
    "paused_seconds": 0,
    "warnings": [],
}
_ESCALATED = {
    **_TIMER,
    "id": TIMER_2,
    "lead_id": "lead-43",
    "status": "ESCALATED",
    "idempotency_key": None,
    "updated_at": LATER,
    "escalations": [
        {"step": 1, "repeat": 0, "executed_at": LATER, "outcome": "SUCCESS", "error": None}
    ],
}
_COMPLETED = {
    **_TIMER,
    "status": "COMPLETED",
    "completed_at": "2026-03-02T09:12:40Z",
    "updated_at": "2026-03-02T09:12:40Z",
    "breached": False,
}
_CALENDAR = {
    "calendar_id": "berlin-office",
    "timezone": "Europe/Berlin",
    "weekly_hours": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")},
    "holidays": ["2026-12-24"],
    "holiday_country": "DE",
    "holiday_subdivision": "BY",
    "created_at": STARTED,
    "updated_at": STARTED,
}
_CONTRACT = {
    "contract_id": "gold",
    "version": 2,
    "current_version": 2,
    "name": "Gold: first contact within 2 business hours",
    "window_seconds": 7200,
    "calendar_id": "berlin-office",
    "warning_thresholds": [50, 90],
    "escalation_steps": [
        LADDER[0],
        {**LADDER[1], "repeat_every_seconds": 900, "max_repeats": 3},
    ],
    "pause_on": ["lead.waiting_on_customer"],
    "resume_on": ["lead.customer_replied"],
    "retired_at": None,
    "created_at": STARTED,
}
_WEBHOOK = {
    "id": WEBHOOK,
    "url": "https://93.184.215.14/hooks/sla",
    "event_types": ["sla.timer.due", "sla.escalation.triggered"],
    "description": "CRM escalations",
    "enabled": True,
    "created_at": STARTED,
    "updated_at": STARTED,
    "disabled_at": None,
    "disabled_reason": None,
    "failing_since": None,
    "last_success_at": LATER,
    "secret_rotation": None,
}
_DELIVERY = {
    "id": 17,
    "webhook_id": WEBHOOK,
    "event_id": "evt_1042",
    "event_type": "sla.timer.due",
    "status": "FAILED",
    "attempts": 8,
    "next_attempt_at": None,
    "last_attempt_at": "2026-03-03T13:05:00Z",
    "last_status_code": 503,
    "last_duration_ms": 212,
    "last_error": "HTTP 503 from the receiver",
    "delivered_at": None,
    "created_at": DUE,
}
_KEY = {"prefix": "3f9c1a7b2e4d", "created_at": STARTED, "revoked_at": None}
_API_KEY = "sla_3f9c1a7b2e4d_Jx8QdK2mV9pL4rT7wZ1yB6nC3sF5hG0a"

_RESPONSES: dict[str, Any] = {
    "Timer": _TIMER,
    "TimerPage": {"items": [_ESCALATED], "next_cursor": "eyJpZCI6IjFjOGUyZGFmIn0"},
    "TimerBatch": {"items": [_TIMER, {**_TIMER, "id": TIMER_2, "lead_id": "lead-43"}]},
    "TimerItems": {"items": [_COMPLETED]},
    "TenantCreated": {"tenant_id": TENANT, "name": "acme", "api_key": _API_KEY},
    "ApiKey": {**_KEY, "revoked_at": LATER},
    "ApiKeyCreated": {**_KEY, "api_key": _API_KEY},
    "ApiKeyList": {"items": [_KEY]},
    "Liveness": {"status": "ok"},
    "Readiness": {"database": "ok", "migrations": "ok", "revision": "0008", "redis": "ok"},
    "EventPage": {
        "items": [
            {
                "id": "evt_1042",
                "type": "sla.timer.due",
                "timestamp": DUE,
                "data": {
                    "tenant_id": TENANT,
                    "timer_id": TIMER,
                    "lead_id": "lead-42",
                    "sla_contract_id": "default",
                    "correlation_id": "req-5f2c9a",
                    "due_at": DUE,
                },
            }
        ],
        "next_cursor": "1042",
    },
    "Webhook": _WEBHOOK,
    "WebhookCreated": {
        **_WEBHOOK,
        "last_success_at": None,
        "secret": "whsec_MfKQ9r8GKYqeVs6tWgXDVdNbW1u2Ryk1",
    },
    "WebhookPage": {"items": [_WEBHOOK], "next_cursor": None},
    "SecretRotated": {
        "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        "previous_secret_expires_at": "2026-03-03T09:00:00Z",
    },
    "DeliveryPage": {"items": [_DELIVERY], "next_cursor": None},
    "DeliveryDetail": {
        **_DELIVERY,
        "attempt_history": [
            {
                "attempt": 8,
                "attempted_at": "2026-03-03T13:05:00Z",
                "status_code": 503,
                "duration_ms": 212,
                "error": "HTTP 503 from the receiver",
            }
        ],
    },
    "ReplayResult": {"replayed": 12},
    "LeadEventResult": {
        "event_id": "crm-1001",
        "outcome": "started",
        "timer_id": TIMER,
        "reason": None,
    },
    "LeadEventResults": {
        "results": [
            {
                "event_id": "crm-1002",
                "status": 201,
                "replayed": False,
                "outcome": "started",
                "timer_id": TIMER_2,
                "reason": None,
            },
            {
                "event_id": "crm-1003",
                "status": 200,
                "replayed": False,
                "outcome": "completed",
                "timer_id": TIMER,
                "reason": None,
            },
        ]
    },
    "Calendar": _CALENDAR,
    "CalendarPage": {"items": [_CALENDAR], "next_after": None},
    "Contract": _CONTRACT,
    "ContractPage": {"items": [_CONTRACT], "next_after": None},
    "Timeline": {
        "timer_id": TIMER_2,
        "items": [
            {
                "kind": "started",
                "at": STARTED,
                "correlation_id": "req-5f2c9a",
                "details": {"started_at": STARTED, "due_at": DUE, "supersedes": None},
            },
            {
                "kind": "due",
                "at": DUE,
                "correlation_id": "req-5f2c9a",
                "details": {"due_at": DUE},
            },
            {
                "kind": "step",
                "at": LATER,
                "correlation_id": "req-5f2c9a",
                "details": {
                    "step": 1,
                    "repeat": 0,
                    "outcome": "SUCCESS",
                    "action": "notify",
                    "target": "owner",
                    "error": None,
                },
            },
        ],
    },
    "Stats": {
        "from": "2026-03-01T00:00:00Z",
        "to": "2026-04-01T00:00:00Z",
        "sla_contract_id": None,
        "as_of": "2026-03-15T12:00:00Z",
        "started": 1200,
        "completed_within_sla": 1010,
        "completed_late": 62,
        "open_breached": 8,
        "breached": 70,
        "compliance_percent": 93.5,
        "cancelled": 40,
        "superseded": 12,
        "active": 64,
        "paused": 4,
        "overdue": {
            "count": 8,
            "oldest_fire_at": "2026-03-15T11:40:00Z",
            "oldest_age_seconds": 1200.0,
        },
        "time_to_complete_seconds": {"completed": 1072, "p50": 840, "p90": 1620},
        "escalations": [{"step": 1, "success": 70, "failed": 1, "skipped": 0}],
        "warnings": {
            "sent": 150,
            "skipped": 6,
            "by_threshold": [{"threshold": 50, "sent": 150, "skipped": 6}],
        },
    },
    "TenantOverviewPage": {
        "as_of": "2026-03-15T12:00:00Z",
        "day_from": "2026-03-15T00:00:00Z",
        "items": [
            {
                "tenant_id": TENANT,
                "name": "acme",
                "active": 64,
                "paused": 4,
                "overdue": 2,
                "oldest_overdue_age_seconds": 95.0,
                "started_today": 120,
                "breached_today": 3,
                "compliance_percent_today": 97.5,
            }
        ],
        "next_cursor": None,
    },
}


def request_example(model: type[BaseModel]) -> Any:
    """The example of a request body: the model's own, else this module's."""
    own = model.model_json_schema().get("examples")
    return own[0] if own else REQUESTS.get(model.__name__)


_CANCELLED = {
    **_TIMER,
    "status": "CANCELLED",
    "cancel_reason": "lead merged into lead-41",
    "cancelled_at": "2026-03-02T09:05:00Z",
    "updated_at": "2026-03-02T09:05:00Z",
}
_PAUSED = {
    **_TIMER,
    "status": "PAUSED",
    "paused_at": "2026-03-02T09:10:00Z",
    "pause_reason": "waiting on the customer",
    "updated_at": "2026-03-02T09:10:00Z",
}
_RESUMED = {
    **_TIMER,
    "due_at": "2026-03-02T10:30:00Z",
    "paused_seconds": 3600.0,
    "updated_at": "2026-03-02T10:10:00Z",
}
_RETRIED = {**_ESCALATED, "processing_status": "PENDING", "attempts": 0, "last_error": None}

# Where one model answers operations that leave the timer in different states.
_BY_OPERATION: dict[tuple[str, str], Any] = {
    ("post", "/v1/timers/{timer_id}/cancel"): _CANCELLED,
    ("post", "/v1/timers/{timer_id}/complete"): _COMPLETED,
    ("post", "/v1/timers/{timer_id}/pause"): _PAUSED,
    ("post", "/v1/timers/{timer_id}/resume"): _RESUMED,
    ("post", "/v1/timers/{timer_id}/retry"): _RETRIED,
    ("post", "/v1/leads/{lead_id}/cancel"): {"items": [_CANCELLED]},
}


def response_example(model: type[BaseModel], method: str = "", path: str = "") -> Any:
    """The example of a response, as the model serializes it (None: there is none)."""
    raw = _BY_OPERATION.get((method, path)) or _RESPONSES.get(model.__name__)
    if raw is None:
        return None
    return model.model_validate(raw).model_dump(mode="json", by_alias=True)


# What a client sees for each status: the type and a typical detail. The rest of a
# problem example comes from the operation (its path) and the response's description.
_PROBLEM_TYPES = {
    400: "malformed-body",
    409: "conflict",
    422: "validation-error",
    429: "rate-limited",
    503: "service-unavailable",
}


def problem_example(status: int, description: str, path: str) -> dict[str, Any]:
    slug = _PROBLEM_TYPES.get(status)
    example: dict[str, Any] = {
        "type": problem_type(slug) if slug else "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": description[:1].lower() + description[1:],
        "instance": path,
    }
    if status == 422:
        example["errors"] = [
            {"field": "window_seconds", "reason": "Input should be greater than 0"}
        ]
    return example
