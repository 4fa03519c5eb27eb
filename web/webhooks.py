"""Webhook subscription routes: subscribe, read, change, delete, rotate the
signing secret, list deliveries and their attempts, retry one delivery, replay
a window of events.

Every query is scoped by the authenticated tenant, and another tenant's
subscription or delivery answers 404 exactly like a missing one. The secret
leaves the service twice only: in the answer to the create and to a rotation.

URLs pass the SSRF guard (models/destinations.py) when subscribed and when
changed; tasks/delivery.py checks them again at every delivery, since DNS can
change. Sending is the delivery worker's: retry and replay arm deliveries
(PENDING, due now) and wake it after the commit.
"""

from __future__ import annotations

import base64
import logging
from typing import Any
from uuid import UUID

from flask import Blueprint, Response, g

from models import signatures
from models import webhooks as webhook_sql
from models.db import tenant_scope
from models.destinations import UnsafeDestination, check, parse

from .cursors import decode_cursor, encode_cursor
from .operations import json_response, operation
from .problems import ApiProblem, not_found, problem_type, validation_error
from .schemas import (
    MAX_REPLAY_EVENTS,
    Delivery,
    DeliveryDetail,
    DeliveryListQuery,
    DeliveryPage,
    Problem,
    ReplayRequest,
    ReplayResult,
    RotateSecretRequest,
    SecretRotated,
    Webhook,
    WebhookCreate,
    WebhookCreated,
    WebhookListQuery,
    WebhookPage,
    WebhookUpdate,
)
from .services import services

log = logging.getLogger(__name__)

bp = Blueprint("webhooks", __name__)

NOT_FOUND = ("No such webhook subscription for this tenant", Problem)
DELIVERY_NOT_FOUND = ("No such subscription or delivery for this tenant", Problem)
DISABLED = ("The subscription is disabled: enable it first (PATCH enabled: true)", Problem)
# Delivery ids are bigints: a longer number in the path names no delivery.
MAX_DELIVERY_ID = 2**63 - 1
_DELIVERY_CURSOR = "delivery|"


def _tenant():
    """A transaction that sees only the authenticated tenant's rows."""
    return tenant_scope(services().engine, g.tenant_id)


def _wake() -> None:
    # After the commit, so the worker finds the rows. It never raises: a lost
    # wake-up only waits for the sweep.
    from tasks.delivery import wake_delivery

    wake_delivery()


def _checked_url(url: str) -> str:
    """The URL if the SSRF guard lets it through; else a 422 naming ``url``."""
    try:
        if parse(url).username is not None:
            raise UnsafeDestination(
                "the URL must not carry a user name or password; "
                "receivers authenticate requests by their signature"
            )
        check(url, allow_private=services().settings.webhook_allow_private_networks)
    except UnsafeDestination as exc:
        raise validation_error([{"field": "url", "reason": str(exc)}]) from None
    return url


def _disabled() -> ApiProblem:
    return ApiProblem(
        409,
        "the subscription is disabled; enable it first (PATCH enabled: true)",
        type_=problem_type("webhook-disabled"),
    )


def encode_delivery_cursor(delivery_id: int) -> str:
    return base64.urlsafe_b64encode(f"{_DELIVERY_CURSOR}{delivery_id}".encode()).decode()


def decode_delivery_cursor(cursor: str) -> int:
    """Raises ValueError for a cursor this listing did not hand out."""
    text = base64.urlsafe_b64decode(cursor.encode()).decode()
    digits = text.removeprefix(_DELIVERY_CURSOR)
    if not text.startswith(_DELIVERY_CURSOR) or not digits.isdigit() or len(digits) > 18:
        raise ValueError("not a delivery cursor")
    return int(digits)


def _bad_cursor() -> ApiProblem:
    return validation_error([{"field": "cursor", "reason": "is not a cursor returned by this API"}])


def _delivery_id(raw: int) -> int:
    if raw > MAX_DELIVERY_ID:
        raise not_found("delivery")
    return raw


def _subscription(conn, webhook_id: UUID, *, lock: bool = False) -> dict[str, Any]:
    find = webhook_sql.lock_subscription if lock else webhook_sql.get_subscription
    row = find(conn, g.tenant_id, webhook_id)
    if row is None:
        raise not_found("webhook subscription")
    return row


@bp.post("/v1/webhooks")
@operation(
    "Subscribe a URL to the tenant's events",
    limited=True,
    tag="webhooks",
    body=WebhookCreate,
    responses={201: ("Subscribed; the signing secret is shown only here", WebhookCreated)},
    description=(
        "Each matching event is POSTed to the URL as a signed JSON envelope "
        "(Standard Webhooks: webhook-id, webhook-timestamp, webhook-signature; see "
        "docs/webhooks.md). Only events written after the subscription are sent; "
        "POST /v1/webhooks/{webhook_id}/replay sends earlier ones. The URL is refused "
        "(422 naming url) unless it is http or https and its host resolves to public "
        "addresses only (SLA_WEBHOOK_ALLOW_PRIVATE_NETWORKS=1 lifts the address rule)."
    ),
)
def create(body: WebhookCreate):
    url = _checked_url(body.url)
    with _tenant() as conn:
        row = webhook_sql.create_subscription(
            conn,
            g.tenant_id,
            url=url,
            event_types=body.event_types,
            description=body.description,
            secret=signatures.new_secret(),
        )
    headers = {"Location": f"/v1/webhooks/{row['id']}"}
    return json_response(WebhookCreated.from_row(row), 201, headers)


@bp.get("/v1/webhooks")
@operation(
    "List webhook subscriptions, newest first",
    tag="webhooks",
    query=WebhookListQuery,
    responses={200: ("A page of subscriptions (never their secrets)", WebhookPage)},
)
def list_webhooks(query: WebhookListQuery):
    after = None
    if query.cursor is not None:
        try:
            after = decode_cursor(query.cursor)
        except (ValueError, TypeError):
            raise _bad_cursor() from None
    with _tenant() as conn:
        rows, more = webhook_sql.list_subscriptions(
            conn, g.tenant_id, limit=query.limit, after=after
        )
    next_cursor = encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None
    items = [Webhook.from_row(r) for r in rows]
    return json_response(WebhookPage(items=items, next_cursor=next_cursor))


@bp.get("/v1/webhooks/<uuid:webhook_id>")
@operation(
    "Get a webhook subscription (never its secret)",
    tag="webhooks",
    responses={200: ("The subscription", Webhook), 404: NOT_FOUND},
)
def get(webhook_id: UUID):
    with _tenant() as conn:
        return json_response(Webhook.from_row(_subscription(conn, webhook_id)))


@bp.patch("/v1/webhooks/<uuid:webhook_id>")
@operation(
    "Change a webhook subscription",
    limited=True,
    tag="webhooks",
    body=WebhookUpdate,
    responses={200: ("The changed subscription", Webhook), 404: NOT_FOUND},
    description=(
        "JSON merge semantics: fields left out are unchanged; event_types null means "
        "every type, description null clears it. A new url passes the same SSRF guard "
        "as a subscription. enabled false stops deliveries; enabled true on a disabled "
        "subscription starts it afresh (disabled_at, disabled_reason and failing_since "
        "cleared). Deliveries already written keep their state."
    ),
)
def update(webhook_id: UUID, body: WebhookUpdate):
    changes = {name: getattr(body, name) for name in body.model_fields_set}
    if "url" in changes:
        _checked_url(changes["url"])
    with _tenant() as conn:
        if not changes:
            row = _subscription(conn, webhook_id)
        else:
            row = webhook_sql.update_subscription(conn, g.tenant_id, webhook_id, changes)
            if row is None:
                raise not_found("webhook subscription")
    return json_response(Webhook.from_row(row))


@bp.delete("/v1/webhooks/<uuid:webhook_id>")
@operation(
    "Delete a webhook subscription",
    limited=True,
    tag="webhooks",
    responses={204: ("Deleted, with its deliveries and their attempts", None), 404: NOT_FOUND},
)
def delete(webhook_id: UUID):
    with _tenant() as conn:
        if not webhook_sql.delete_subscription(conn, g.tenant_id, webhook_id):
            raise not_found("webhook subscription")
    return Response(status=204)


@bp.post("/v1/webhooks/<uuid:webhook_id>/rotate-secret")
@operation(
    "Rotate a subscription's signing secret",
    limited=True,
    tag="webhooks",
    body=RotateSecretRequest,
    body_required=False,
    responses={200: ("The new secret, shown only here", SecretRotated), 404: NOT_FOUND},
    description=(
        "The current secret keeps signing beside the new one (two signatures in "
        "webhook-signature) for grace_seconds, by default SLA_WEBHOOK_SECRET_GRACE_SECONDS "
        "(24 h), so receivers can roll over without losing events; grace_seconds 0 "
        "revokes it at once. Only two secrets ever sign: a rotation inside the grace "
        "period of the last one drops the oldest secret immediately."
    ),
)
def rotate_secret(webhook_id: UUID, body: RotateSecretRequest):
    grace = body.grace_seconds
    if grace is None:
        grace = services().settings.webhook_secret_grace_seconds
    secret = signatures.new_secret()
    with _tenant() as conn:
        found, expires = webhook_sql.rotate_secret(conn, g.tenant_id, webhook_id, secret, grace)
    if not found:
        raise not_found("webhook subscription")
    return json_response(SecretRotated(secret=secret, previous_secret_expires_at=expires))


@bp.get("/v1/webhooks/<uuid:webhook_id>/deliveries")
@operation(
    "List a subscription's deliveries, newest first",
    tag="webhooks",
    query=DeliveryListQuery,
    responses={200: ("A page of deliveries", DeliveryPage), 404: NOT_FOUND},
    description=(
        "One delivery per event sent to this subscription, with its last attempt "
        "(status code, duration, error) and, while PENDING, its next attempt. GET "
        "one delivery for every attempt."
    ),
)
def list_deliveries(webhook_id: UUID, query: DeliveryListQuery):
    after = None
    if query.cursor is not None:
        try:
            after = decode_delivery_cursor(query.cursor)
        except (ValueError, TypeError, UnicodeDecodeError):
            raise _bad_cursor() from None
    with _tenant() as conn:
        _subscription(conn, webhook_id)
        rows, more = webhook_sql.list_deliveries(
            conn, g.tenant_id, webhook_id, status=query.status, limit=query.limit, after=after
        )
    next_cursor = encode_delivery_cursor(rows[-1]["id"]) if more else None
    items = [Delivery.from_row(r) for r in rows]
    return json_response(DeliveryPage(items=items, next_cursor=next_cursor))


def _detail(conn, webhook_id: UUID, delivery_id: int) -> DeliveryDetail:
    row = webhook_sql.get_delivery(conn, g.tenant_id, webhook_id, delivery_id)
    if row is None:
        raise not_found("delivery")
    return DeliveryDetail.from_row(row)


@bp.get("/v1/webhooks/<uuid:webhook_id>/deliveries/<int:delivery_id>")
@operation(
    "Get a delivery and every attempt at it",
    tag="webhooks",
    responses={200: ("The delivery", DeliveryDetail), 404: DELIVERY_NOT_FOUND},
)
def get_delivery(webhook_id: UUID, delivery_id: int):
    with _tenant() as conn:
        return json_response(_detail(conn, webhook_id, _delivery_id(delivery_id)))


@bp.post("/v1/webhooks/<uuid:webhook_id>/deliveries/<int:delivery_id>/retry")
@operation(
    "Send a delivery again now",
    limited=True,
    tag="webhooks",
    responses={
        202: ("Due now; the delivery worker sends it", DeliveryDetail),
        404: DELIVERY_NOT_FOUND,
        409: DISABLED,
    },
    description=(
        "A DELIVERED or FAILED delivery is sent again with a fresh retry schedule "
        "(PENDING, attempts 0). A PENDING one is only made due now, keeping its "
        "attempts. The envelope and its webhook-id are the same as before."
    ),
)
def retry_delivery(webhook_id: UUID, delivery_id: int):
    did = _delivery_id(delivery_id)
    with _tenant() as conn:
        if not _subscription(conn, webhook_id, lock=True)["enabled"]:
            raise _disabled()
        if not webhook_sql.retry_delivery(conn, g.tenant_id, webhook_id, did):
            raise not_found("delivery")
        detail = _detail(conn, webhook_id, did)
    _wake()
    return json_response(detail, 202)


@bp.post("/v1/webhooks/<uuid:webhook_id>/replay")
@operation(
    "Send a window of past events again",
    limited=True,
    tag="webhooks",
    body=ReplayRequest,
    responses={
        202: ("Armed; the delivery worker sends them", ReplayResult),
        404: NOT_FOUND,
        409: DISABLED,
    },
    description=(
        "Every event of the tenant created in [since, until) whose type the "
        "subscription takes (and event_types, if given) is sent again with a fresh "
        "retry schedule, including events from before the subscription existed. "
        "Receivers see the same envelope and webhook-id as before and deduplicate "
        f"by it. One request arms at most {MAX_REPLAY_EVENTS} events: a larger window "
        "is a 422 naming since, and nothing is armed; replay it in narrower windows "
        "(until)."
    ),
)
def replay(webhook_id: UUID, body: ReplayRequest):
    with _tenant() as conn:
        subscription = _subscription(conn, webhook_id, lock=True)
        if not subscription["enabled"]:
            raise _disabled()
        try:
            replayed = webhook_sql.replay(
                conn,
                g.tenant_id,
                subscription,
                since=body.since,
                until=body.until,
                event_types=body.event_types,
                cap=MAX_REPLAY_EVENTS,
            )
        except webhook_sql.ReplayTooLarge as exc:
            reason = (
                f"the window holds more than {exc.cap} events; replay it in narrower "
                "windows (a later since, or an until)"
            )
            raise validation_error([{"field": "since", "reason": reason}]) from None
    if replayed:
        _wake()
    return json_response(ReplayResult(replayed=replayed), 202)
