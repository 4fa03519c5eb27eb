"""The envelope in which an outbox event leaves the service (pure).

Webhooks and the pull feed send the same JSON object::

    {"id": "evt_…", "type": "sla.timer.due", "timestamp": "…Z", "data": {…}}

- ``id`` is the event's stable id: the same on every retry and replay, and the
  ``webhook-id`` header, so receivers deduplicate by it.
- ``timestamp`` is when the event happened (its ``created_at``), RFC 3339 UTC.
- ``data`` is the event's payload plus ``tenant_id``: for timer events
  ``timer_id``, ``lead_id``, ``sla_contract_id``, ``correlation_id``, and for
  steps ``escalation_step``, ``action`` and ``target``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

ID_PREFIX = "evt_"


def event_id(outbox_id: int) -> str:
    return f"{ID_PREFIX}{outbox_id}"


def outbox_id(event_id_: str) -> int | None:
    """The outbox row named by an envelope id; None if it names none."""
    digits = event_id_.removeprefix(ID_PREFIX)
    if event_id_.startswith(ID_PREFIX) and digits.isdigit() and len(digits) <= 18:
        return int(digits)
    return None


def _rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def envelope(row: Mapping[str, Any]) -> dict[str, Any]:
    """The envelope of an outbox row (id, tenant_id, event_type, payload, created_at)."""
    payload = dict(row["payload"])
    payload.pop("type", None)  # said once, at the top
    data = {"tenant_id": str(row["tenant_id"]), **payload}
    return {
        "id": event_id(row["id"]),
        "type": row["event_type"],
        "timestamp": _rfc3339(row["created_at"]),
        "data": data,
    }


def body(row: Mapping[str, Any]) -> str:
    """The envelope serialized: the exact bytes that are signed and sent."""
    return orjson.dumps(envelope(row)).decode()
