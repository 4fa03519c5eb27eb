"""The compliance stats' rollup tables (migration 0007; models/stats.py). They
share ``models.schema``'s metadata, which imports them."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    SmallInteger,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import UUID

from .schema_base import metadata
from .schema_base import now as _now

# The figures of a tenant's closed timers, per UTC hour and UTC day (hours 1
# or 24) of started_at and contract: one counter per (kind, key, outcome),
# e.g. (step, 2, FAILED).
sla_stats_rollup = Table(
    "sla_stats_rollup",
    metadata,
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("hours", SmallInteger, primary_key=True),
    Column("bucket", DateTime(timezone=True), primary_key=True),
    Column("sla_contract_id", Text, primary_key=True),
    Column("kind", Text, primary_key=True),
    Column("key", Integer, primary_key=True, server_default="0"),
    Column("outcome", Text, primary_key=True, server_default=text("''")),
    Column("n", BigInteger, nullable=False),
    CheckConstraint("hours IN (1, 24)", name="hours"),
)

# Per tenant, the feed position (txid, event id) up to which closes are
# folded, and the transaction id up to which step and warning rows are.
sla_stats_positions = Table(
    "sla_stats_positions",
    metadata,
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("txid", BigInteger, nullable=False, server_default="0"),
    Column("event_id", BigInteger, nullable=False, server_default="0"),
    Column("rows_txid", BigInteger, nullable=False, server_default="0"),
    Column("folded_at", DateTime(timezone=True), nullable=False, server_default=_now()),
)
