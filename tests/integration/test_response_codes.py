"""Every response code /openapi.json documents for an operation can occur.

Each (operation, code) is driven through the Flask test client against the real
PostgreSQL and Redis, and the answer must carry that code (problem+json from 400
up). The codes the plumbing documents for every operation of a kind (web/openapi.py
``_responses``) are provoked the same way for each:

- 401: no Authorization header (admin routes: with the admin token configured);
- 403: a key of a disabled tenant (tenant routes);
- 400 / 413 / 415: a malformed JSON body, one byte over SLA_MAX_BODY_BYTES, a body
  sent as text/plain;
- 422: a body or query parameter the model does not know;
- 429: an app whose write limit is one request, its second request;
- 503: an app whose database refuses connections;
- 404: path parameters that name nothing (admin routes: no admin token configured);
- 200: a GET without path parameters (required query parameters from QUERIES).

Every other code has an entry in ``SPECIFIC``: how to provoke it. A new operation,
or a new code of an old one, fails ``test_every_documented_code_can_occur`` until
it is either provoked generically or given an entry there.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest
from sqlalchemy import text

ADMIN = "codes-admin-token"
NOTHING = "nothing"  # marks "send no body"
# Required query parameters of the GETs answered 200 generically.
QUERIES = {"/v1/stats": {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}}
# Well-formed path parameters that name nothing.
ABSENT = {
    "timer_id": lambda: str(uuid4()),
    "webhook_id": lambda: str(uuid4()),
    "tenant_id": lambda: str(uuid4()),
    "delivery_id": lambda: "999999",
    "calendar_id": lambda: "no-such-calendar",
    "contract_id": lambda: "no-such-contract",
    "prefix": lambda: "0123456789ab",
    "lead_id": lambda: "no-such-lead",
}
PUBLIC_URL = "http://93.184.215.14/hooks/sla"  # passes the SSRF guard without DNS


@dataclasses.dataclass
class World:
    """The apps and one tenant that the provokers act on."""

    app: Any  # admin token set, no write limit
    bare: Any  # no admin token: admin routes answer 404
    limited: Any  # a write limit of one request per hour
    dead: Any  # PostgreSQL refuses connections
    engine: Any
    tenant_id: Any
    key: str
    disabled_key: str  # a key of a disabled tenant
    _n: int = 0

    def call(
        self,
        method: str,
        path: str,
        body: Any = NOTHING,
        *,
        app: Any = None,
        key: str | None = None,
        auth: bool = True,
        **kw: Any,
    ):
        headers = dict(kw.pop("headers", {}))
        if auth:
            headers["Authorization"] = f"Bearer {key or self.key}"
        if body is not NOTHING:
            kw["json"] = body
        return (app or self.app).test_client().open(path, method=method, headers=headers, **kw)

    def admin(self, method: str, path: str, body: Any = NOTHING, **kw: Any):
        return self.call(method, path, body, key=ADMIN, **kw)

    def lead(self) -> str:
        self._n += 1
        return f"lead-codes-{self._n}"

    def timer(self, **body: Any) -> dict:
        body.setdefault("lead_id", self.lead())
        body.setdefault("window_seconds", 600)
        response = self.call("POST", "/v1/timers", body)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    def closed_timer(self, how: str) -> str:
        timer_id = self.timer()["id"]
        assert self.call("POST", f"/v1/timers/{timer_id}/{how}").status_code == 200
        return timer_id

    def dead_letter(self) -> str:
        """A timer whose firing failed its last attempt (processing FAILED)."""
        timer_id = self.timer()["id"]
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE sla_timers SET status = 'DUE', processing_status = 'FAILED', "
                    "attempts = 3, next_fire_at = NULL, last_error = 'crm down' WHERE id = :id"
                ),
                {"id": timer_id},
            )
        return timer_id

    def webhook(self, enabled: bool = True) -> str:
        response = self.call("POST", "/v1/webhooks", {"url": PUBLIC_URL})
        assert response.status_code == 201, response.get_json()
        webhook_id = response.get_json()["id"]
        if not enabled:
            patched = self.call("PATCH", f"/v1/webhooks/{webhook_id}", {"enabled": False})
            assert patched.status_code == 200, patched.get_json()
        return webhook_id

    def delivery(self, enabled: bool = True) -> str:
        """``/v1/webhooks/<id>/deliveries/<id>`` of a delivery of a started timer."""
        webhook_id = self.webhook()
        self.timer()  # its sla.timer.started fans out to the subscription
        page = self.call("GET", f"/v1/webhooks/{webhook_id}/deliveries").get_json()
        if not enabled:
            self.call("PATCH", f"/v1/webhooks/{webhook_id}", {"enabled": False})
        return f"/v1/webhooks/{webhook_id}/deliveries/{page['items'][0]['id']}"

    def calendar(self) -> str:
        calendar_id = f"cal-{uuid4().hex[:8]}"
        response = self.call("PUT", f"/v1/calendars/{calendar_id}", _calendar_body())
        assert response.status_code == 201, response.get_json()
        return calendar_id

    def contract(self, **extra: Any) -> str:
        contract_id = f"contract-{uuid4().hex[:8]}"
        body = {
            "name": contract_id,
            "window_seconds": 600,
            "escalation_steps": [{"step": 1, "after_seconds": 0, "action": "notify"}],
            **extra,
        }
        response = self.call("PUT", f"/v1/contracts/{contract_id}", body)
        assert response.status_code == 201, response.get_json()
        return contract_id

    def spare_key_prefix(self) -> str:
        """The prefix of a second key of the tenant (its first one stays in use)."""
        created = self.admin("POST", f"/v1/admin/tenants/{self.tenant_id}/api-keys")
        assert created.status_code == 201, created.get_json()
        return created.get_json()["prefix"]


def _calendar_body() -> dict:
    from web.examples import request_example
    from web.schemas import CalendarPut

    return request_example(CalendarPut)


def _since() -> str:
    return (datetime.now(UTC) - timedelta(hours=1)).isoformat()


def _start(w: World, key: str, lead: str, path: str = "/v1/timers"):
    body = {"lead_id": lead, "window_seconds": 600}
    if path.endswith("bulk"):
        body = {"timers": [body]}
    return w.call("POST", path, body, headers={"Idempotency-Key": key})


def _started_twice(w: World, path: str, same_body: bool):
    lead = w.lead()
    assert _start(w, f"k-{lead}", lead, path).status_code == 201
    return _start(w, f"k-{lead}", lead if same_body else w.lead(), path)


def _lead_event(w: World, event_id: str, lead: str):
    body = {"event_id": event_id, "type": "lead.qualified", "lead_id": lead}
    return w.call("POST", "/v1/lead-events", {**body, "window_seconds": 600})


def _lead_event_twice(w: World, same_body: bool):
    event_id, lead = f"evt-{uuid4().hex[:8]}", w.lead()
    assert _lead_event(w, event_id, lead).status_code == 201
    return _lead_event(w, event_id, lead if same_body else w.lead())


Provoke = Callable[[World], Any]
T = "/v1/timers/{timer_id}"
W = "/v1/webhooks/{webhook_id}"
KEYS = "/v1/admin/tenants/{tenant_id}/api-keys"

SPECIFIC: dict[tuple[str, str], dict[int, Provoke]] = {
    ("post", "/v1/timers"): {
        201: lambda w: _start(w, "k-new", w.lead()),
        200: lambda w: _started_twice(w, "/v1/timers", same_body=True),
        409: lambda w: _started_twice(w, "/v1/timers", same_body=False),
    },
    ("post", "/v1/timers/bulk"): {
        201: lambda w: _start(w, "k-new", w.lead(), "/v1/timers/bulk"),
        200: lambda w: _started_twice(w, "/v1/timers/bulk", same_body=True),
        409: lambda w: _started_twice(w, "/v1/timers/bulk", same_body=False),
    },
    ("get", T): {200: lambda w: w.call("GET", f"/v1/timers/{w.timer()['id']}")},
    ("get", T + "/timeline"): {
        200: lambda w: w.call("GET", f"/v1/timers/{w.timer()['id']}/timeline")
    },
    ("post", T + "/cancel"): {
        200: lambda w: w.call("POST", f"/v1/timers/{w.timer()['id']}/cancel"),
        409: lambda w: w.call("POST", f"/v1/timers/{w.closed_timer('complete')}/cancel"),
    },
    ("post", T + "/complete"): {
        200: lambda w: w.call("POST", f"/v1/timers/{w.timer()['id']}/complete"),
        409: lambda w: w.call("POST", f"/v1/timers/{w.closed_timer('cancel')}/complete"),
    },
    ("post", T + "/pause"): {
        200: lambda w: w.call("POST", f"/v1/timers/{w.timer()['id']}/pause"),
        409: lambda w: w.call("POST", f"/v1/timers/{w.closed_timer('complete')}/pause"),
    },
    ("post", T + "/resume"): {
        200: lambda w: w.call("POST", f"/v1/timers/{w.timer()['id']}/resume"),
        409: lambda w: w.call("POST", f"/v1/timers/{w.closed_timer('cancel')}/resume"),
    },
    ("post", T + "/retry"): {
        200: lambda w: w.call("POST", f"/v1/timers/{w.dead_letter()}/retry"),
        409: lambda w: w.call("POST", f"/v1/timers/{w.timer()['id']}/retry"),
    },
    ("post", "/v1/leads/{lead_id}/cancel"): {
        200: lambda w: w.call("POST", f"/v1/leads/{w.timer()['lead_id']}/cancel", {})
    },
    ("post", "/v1/leads/{lead_id}/complete"): {
        200: lambda w: w.call("POST", f"/v1/leads/{w.timer()['lead_id']}/complete", {})
    },
    ("post", "/v1/lead-events"): {
        201: lambda w: _lead_event(w, f"evt-{uuid4().hex[:8]}", w.lead()),
        200: lambda w: _lead_event_twice(w, same_body=True),
        409: lambda w: _lead_event_twice(w, same_body=False),
    },
    ("post", "/v1/lead-events/bulk"): {
        200: lambda w: w.call(
            "POST",
            "/v1/lead-events/bulk",
            {"events": [{"event_id": "e1", "type": "lead.contacted", "lead_id": w.lead()}]},
        )
    },
    ("put", "/v1/calendars/{calendar_id}"): {
        201: lambda w: w.call("PUT", "/v1/calendars/c1", _calendar_body()),
        200: lambda w: w.call("PUT", f"/v1/calendars/{w.calendar()}", _calendar_body()),
    },
    ("get", "/v1/calendars/{calendar_id}"): {
        200: lambda w: w.call("GET", f"/v1/calendars/{w.calendar()}")
    },
    ("delete", "/v1/calendars/{calendar_id}"): {
        204: lambda w: w.call("DELETE", f"/v1/calendars/{w.calendar()}"),
        409: lambda w: w.call("DELETE", f"/v1/calendars/{_calendar_in_use(w)}"),
    },
    ("put", "/v1/contracts/{contract_id}"): {
        201: lambda w: w.call(
            "PUT",
            "/v1/contracts/gold",
            {"name": "gold", "window_seconds": 60, "escalation_steps": [_STEP]},
        )
    },
    ("get", "/v1/contracts/{contract_id}"): {
        200: lambda w: w.call("GET", f"/v1/contracts/{w.contract()}")
    },
    ("delete", "/v1/contracts/{contract_id}"): {
        204: lambda w: w.call("DELETE", f"/v1/contracts/{w.contract()}")
    },
    ("post", "/v1/webhooks"): {201: lambda w: w.call("POST", "/v1/webhooks", {"url": PUBLIC_URL})},
    ("get", W): {200: lambda w: w.call("GET", f"/v1/webhooks/{w.webhook()}")},
    ("patch", W): {
        200: lambda w: w.call("PATCH", f"/v1/webhooks/{w.webhook()}", {"description": "x"})
    },
    ("delete", W): {204: lambda w: w.call("DELETE", f"/v1/webhooks/{w.webhook()}")},
    ("post", W + "/rotate-secret"): {
        200: lambda w: w.call("POST", f"/v1/webhooks/{w.webhook()}/rotate-secret", {})
    },
    ("get", W + "/deliveries"): {
        200: lambda w: w.call("GET", f"/v1/webhooks/{w.webhook()}/deliveries")
    },
    ("get", W + "/deliveries/{delivery_id}"): {200: lambda w: w.call("GET", w.delivery())},
    ("post", W + "/deliveries/{delivery_id}/retry"): {
        202: lambda w: w.call("POST", w.delivery() + "/retry"),
        409: lambda w: w.call("POST", w.delivery(enabled=False) + "/retry"),
    },
    ("post", W + "/replay"): {
        202: lambda w: w.call("POST", f"/v1/webhooks/{w.webhook()}/replay", {"since": _since()}),
        409: lambda w: w.call(
            "POST", f"/v1/webhooks/{w.webhook(enabled=False)}/replay", {"since": _since()}
        ),
    },
    ("post", "/v1/admin/tenants"): {
        201: lambda w: w.admin("POST", "/v1/admin/tenants", {"name": "initech"})
    },
    ("get", KEYS): {200: lambda w: w.admin("GET", f"/v1/admin/tenants/{w.tenant_id}/api-keys")},
    ("post", KEYS): {201: lambda w: w.admin("POST", f"/v1/admin/tenants/{w.tenant_id}/api-keys")},
    ("delete", KEYS + "/{prefix}"): {
        200: lambda w: w.admin(
            "DELETE", f"/v1/admin/tenants/{w.tenant_id}/api-keys/{w.spare_key_prefix()}"
        ),
        422: lambda w: w.admin("DELETE", f"/v1/admin/tenants/{w.tenant_id}/api-keys/NOT-HEX"),
    },
}
_STEP = {"step": 1, "after_seconds": 0, "action": "notify"}


def _calendar_in_use(w: World) -> str:
    calendar_id = w.calendar()
    w.contract(calendar_id=calendar_id)
    return calendar_id


def _fill(path: str, values: dict[str, str] | None = None) -> str:
    return re.sub(r"{(\w+)}", lambda m: (values or {}).get(m[1]) or ABSENT[m[1]](), path)


def _body(op) -> Any:
    from web.examples import request_example

    return request_example(op.body) if op.body is not None else NOTHING


def generic(w: World, method: str, path: str, op, status: int):
    """Provoke ``status`` the way it arises for every operation of its kind, or None."""
    http = method.upper()
    as_admin = ADMIN if op.auth == "admin" else None
    url = _fill(path)
    if status == 401 and op.auth:
        return w.call(http, url, _body(op), auth=False)
    if status == 403 and op.auth == "tenant":
        return w.call(http, url, _body(op), key=w.disabled_key)
    if op.body is not None and status in (400, 413, 415):
        content, mimetype = {
            400: (b'{"lead_id": ', "application/json"),
            413: (b" " * (w.app.config["MAX_CONTENT_LENGTH"] + 1), "application/json"),
            415: (b"{}", "text/plain"),
        }[status]
        return w.call(http, url, key=as_admin, data=content, content_type=mimetype)
    if status == 422 and op.body is not None:
        return w.call(http, url, {"zz_not_a_field": 1}, key=as_admin)
    if status == 422 and op.query is not None:
        return w.call(http, url, key=as_admin, query_string={"zz_not_a_param": "1"})
    if status == 429 and op.limited:
        w.call(http, url, _body(op), app=w.limited)  # uses up the limit of one
        return w.call(http, url, _body(op), app=w.limited)
    if status == 503:
        return w.call(http, url, _body(op), app=w.dead, key=as_admin)
    if status == 404 and op.auth == "admin":
        return w.call(http, url, _body(op), app=w.bare, key=ADMIN)
    if status == 404 and "{" in path:
        return w.call(http, url, _body(op), key=as_admin)
    if status == 200 and method == "get" and "{" not in path:
        return w.call(http, path, key=as_admin, query_string=QUERIES.get(path, {}))
    return None


@pytest.fixture
def world(engine, settings, tenant):
    from models import tenants as tenant_sql
    from web import create_app

    with engine.begin() as conn:
        disabled_id, disabled_key = tenant_sql.create_tenant(conn, "disabled")
        tenant_sql.set_disabled(conn, disabled_id, True)

    plain = dataclasses.replace(settings, admin_token=ADMIN, rate_limit=None)
    dead_url = re.sub(r"@[^/]+/", "@127.0.0.1:1/", settings.database_url)
    apps = {
        "app": create_app(plain),
        "bare": create_app(dataclasses.replace(plain, admin_token=None)),
        "limited": create_app(dataclasses.replace(plain, rate_limit="1/hour")),
        "dead": create_app(dataclasses.replace(plain, database_url=dead_url)),
    }
    yield World(
        **apps, engine=engine, tenant_id=tenant[0], key=tenant[1], disabled_key=disabled_key
    )
    apps["dead"].extensions["sla"].engine.dispose()


def _documented(app) -> list[tuple[str, str, Any, int]]:
    from web.openapi import _operations, build_document

    document = build_document(app)
    found = []
    for path, method, op in _operations(app):
        for code in document["paths"][path][method]["responses"]:
            if code != "default":
                found.append((method, path, op, int(code)))
    return found


def test_every_documented_code_can_occur(world):
    documented = _documented(world.app)
    assert len(documented) > 200  # the walk found the operations
    failures = []
    for method, path, op, status in documented:
        provoke = SPECIFIC.get((method, path), {}).get(status)
        name = f"{method.upper()} {path} {status}"
        try:
            response = provoke(world) if provoke else generic(world, method, path, op, status)
        except AssertionError as exc:  # a provoker's own setup failed
            failures.append(f"{name}: setup failed: {str(exc)[:200]}")
            continue
        if response is None:
            failures.append(f"{name}: no way to provoke it; add one to SPECIFIC")
        elif response.status_code != status:
            body = response.get_data(as_text=True)[:200]
            failures.append(f"{name}: answered {response.status_code} {body}")
        elif status >= 400 and response.mimetype != "application/problem+json":
            failures.append(f"{name}: answered {response.mimetype}, not problem+json")
    assert not failures, f"{len(failures)} of {len(documented)}:\n" + "\n".join(failures)


def test_the_table_names_only_documented_codes(app):
    documented = {(m, p, s) for m, p, _, s in _documented(app)}
    stale = [
        (method, path, status)
        for (method, path), codes in SPECIFIC.items()
        for status in codes
        if (method, path, status) not in documented
    ]
    assert not stale, stale
