"""Page cursors: opaque strings for positions, decoded before the repository
sees them.

- The timer list's: a position in the keyset order (created_at, id).
- The event feed's (GET /v1/events): a position (txid, id) in the feed's order
  (models/feed.py), versioned and checksummed, so garbage or a mangled cursor is
  refused rather than read as some position. It is not a secret: any position
  only ever yields the caller's own events.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from datetime import datetime
from uuid import UUID


def encode_cursor(created_at: datetime, timer_id: UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{timer_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """Raises ValueError for a cursor this service did not hand out."""
    created, _, timer_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
    return datetime.fromisoformat(created), UUID(timer_id)


# The feed cursor: base64url (no padding) of a version byte, txid and id
# (unsigned 64-bit, big-endian), and 4 bytes of BLAKE2b over those.
_FEED_VERSION = 1
_FEED_LAYOUT = struct.Struct(">BQQ")
_FEED_CHECK = 4
_FEED_TEXT = re.compile(r"[A-Za-z0-9_-]{28}")  # 21 bytes, so no padding
_BIGINT_MAX = 2**63 - 1


def _feed_check(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=_FEED_CHECK, person=b"sla-feed").digest()


def encode_feed_cursor(position: tuple[int, int]) -> str:
    raw = _FEED_LAYOUT.pack(_FEED_VERSION, *position)
    return base64.urlsafe_b64encode(raw + _feed_check(raw)).decode()


def decode_feed_cursor(cursor: str) -> tuple[int, int]:
    """(txid, id); raises ValueError for a cursor this service did not hand out."""
    if not _FEED_TEXT.fullmatch(cursor):
        raise ValueError("not a feed cursor")
    data = base64.urlsafe_b64decode(cursor)
    raw, check = data[: _FEED_LAYOUT.size], data[_FEED_LAYOUT.size :]
    if check != _feed_check(raw):
        raise ValueError("not a feed cursor")
    version, txid, event_id = _FEED_LAYOUT.unpack(raw)
    if version != _FEED_VERSION or txid > _BIGINT_MAX or event_id > _BIGINT_MAX:
        raise ValueError("not a feed cursor")
    return txid, event_id
