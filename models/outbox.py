"""Writing outbox events, and the JSON form in which rows reach the SQL.

Bulk writes pass their rows as one JSON document unpacked by
``jsonb_to_recordset`` (models/sql/): one statement and one round trip per
batch, whatever its size, with the column types spelled out next to the SQL
that uses them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import Connection

from .sql import Queries

SQL = Queries("outbox.sql")


def to_json(rows: Any) -> str:
    # orjson writes datetimes as RFC 3339 and UUIDs as strings, several times
    # faster than json: this serializes every row the firing path writes.
    return orjson.dumps(rows).decode()


def insert_events(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    if rows:
        conn.execute(SQL.insert_events.text, {"rows": to_json(list(rows))})
