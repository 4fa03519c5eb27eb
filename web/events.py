"""The pull feed, GET /v1/events: the tenant's outbox events, oldest first, in
the envelope webhooks deliver, with a cursor that never skips an event
(models/feed.py says why). ``next_cursor`` is always returned, so a consumer
stores it and polls again."""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, g

from models import feed
from models.db import tenant_scope
from models.envelope import envelope

from .cursors import decode_feed_cursor, encode_feed_cursor
from .operations import operation
from .problems import validation_error
from .schemas import LATEST, EventListQuery, EventPage
from .services import services

bp = Blueprint("events", __name__)


def _start(after: str | None) -> feed.Position | None:
    """The position to read after; None for ``latest``."""
    if after is None:
        return feed.START
    if after == LATEST:
        return None
    try:
        return decode_feed_cursor(after)
    except ValueError:
        raise validation_error(
            [{"field": "after", "reason": "is not a cursor returned by this feed, nor latest"}]
        ) from None


@bp.get("/v1/events")
@operation(
    "Read the tenant's events, oldest first (the pull feed)",
    tag="events",
    query=EventListQuery,
    responses={200: ("A page of events and the cursor to read on from", EventPage)},
    description=(
        "Events are served in the order of the transactions that wrote them, each once: "
        "no event is ever skipped, even when transactions commit out of order. The price: "
        "an event appears once every transaction older than its own has ended, so a "
        "long-running transaction on the database delays the feed. Poll with the "
        "next_cursor of the previous answer, always present; when it comes back "
        "unchanged there was nothing new to read, so wait before polling again."
    ),
)
def list_events(query: EventListQuery):
    start = _start(query.after)
    with tenant_scope(services().engine, g.tenant_id) as conn:
        if start is None:
            page = feed.Page([], feed.latest(conn))
        else:
            page = feed.read_page(conn, g.tenant_id, start, query.limit, query.types)
    # The envelope as webhooks send it (models/envelope.py), serialized as is.
    body = {
        "items": [envelope(r) for r in page.events],
        "next_cursor": encode_feed_cursor(page.next),
    }
    return Response(orjson.dumps(body), mimetype="application/json")
