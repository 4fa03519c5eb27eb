"""The list route's page cursor: an opaque string for a position in the
keyset order (created_at, id). The repository takes the decoded position."""

from __future__ import annotations

import base64
from datetime import datetime
from uuid import UUID


def encode_cursor(created_at: datetime, timer_id: UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{timer_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """Raises ValueError for a cursor this service did not hand out."""
    created, _, timer_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
    return datetime.fromisoformat(created), UUID(timer_id)
