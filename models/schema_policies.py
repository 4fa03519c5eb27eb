"""The SLA policy's tables: warnings before breach, business-hours calendars,
and versioned contracts (migration 0006). They share ``models.schema``'s
metadata, which imports them, so the schema is still one ``metadata``.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from .schema_base import TXID, metadata
from .schema_base import in_ as _in
from .schema_base import now as _now

WARNING_OUTCOMES = ("SENT", "SKIPPED")

# Warnings before breach: one row per (timer, threshold), SENT when its event
# was written or SKIPPED (already past at the start, or overtaken by due). The
# primary key is the exactly-once guarantee of warnings.
sla_timer_warnings = Table(
    "sla_timer_warnings",
    metadata,
    Column("tenant_id", UUID(as_uuid=True), primary_key=True),
    Column("timer_id", UUID(as_uuid=True), primary_key=True),
    Column("threshold", Integer, primary_key=True),
    Column("outcome", Text, nullable=False),
    # The instant the warning was for, and when it was recorded.
    Column("scheduled_at", DateTime(timezone=True), nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("correlation_id", Text, nullable=False),
    # The writing transaction's id: the stats fold warning rows by it (models/stats.py).
    Column("txid", BigInteger, nullable=False, server_default=TXID),
    CheckConstraint(_in("outcome", WARNING_OUTCOMES), name="outcome"),
    CheckConstraint("threshold > 0 AND threshold < 100", name="threshold_range"),
    Index("ix_sla_timer_warnings_tenant_txid", "tenant_id", "txid"),
    ForeignKeyConstraint(
        ["tenant_id", "timer_id"], ["sla_timers.tenant_id", "sla_timers.id"], ondelete="CASCADE"
    ),
)

# A tenant's business-hours calendars (models/calendars.py), by the tenant's own id.
calendars = Table(
    "calendars",
    metadata,
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("calendar_id", Text, primary_key=True),
    Column("timezone", Text, nullable=False),
    # {"mon": [["09:00", "17:00"]], ...}
    Column("weekly_hours", JSONB, nullable=False),
    # Explicit dates ("2026-12-24"), added to the country's holidays.
    Column("holidays", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("holiday_country", Text),
    Column("holiday_subdivision", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now()),
)

# A contract names its current version; each PUT writes version N+1. Retired
# contracts start no timers; running ones keep their snapshot.
sla_contracts = Table(
    "sla_contracts",
    metadata,
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("contract_id", Text, primary_key=True),
    Column("current_version", Integer, nullable=False),
    Column("retired_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now()),
)

sla_contract_versions = Table(
    "sla_contract_versions",
    metadata,
    Column("tenant_id", UUID(as_uuid=True), primary_key=True),
    Column("contract_id", Text, primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("window_seconds", Integer, nullable=False),
    Column("calendar_id", Text),
    Column(
        "warning_thresholds", ARRAY(Integer), nullable=False, server_default=text("'{}'::integer[]")
    ),
    Column("escalation_steps", JSONB, nullable=False),
    # Lead event types that pause and resume the contract's timers.
    Column("pause_on", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("resume_on", ARRAY(Text), nullable=False, server_default=text("'{}'::text[]")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    CheckConstraint("window_seconds > 0", name="window_positive"),
    CheckConstraint("version > 0", name="version_positive"),
    ForeignKeyConstraint(
        ["tenant_id", "contract_id"],
        ["sla_contracts.tenant_id", "sla_contracts.contract_id"],
        ondelete="CASCADE",
    ),
)
