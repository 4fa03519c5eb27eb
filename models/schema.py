"""Database schema (SQLAlchemy Core); the alembic revisions mirror it.

A timer row is the source of truth. The firing path finds work through
``next_fire_at``: the next instant something must happen to a PENDING timer
(its due time, a later escalation step, or a retry after backoff). Terminal
timers have ``next_fire_at`` NULL, so the partial claim index holds only live
work and stays small however many timers have finished.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

TIMER_STATUSES = ("ACTIVE", "DUE", "ESCALATED", "CANCELLED", "COMPLETED")
OPEN_STATUSES = ("ACTIVE", "DUE", "ESCALATED")
PROCESSING_STATUSES = ("PENDING", "PROCESSING", "COMPLETED", "FAILED")
STEP_OUTCOMES = ("SUCCESS", "FAILED", "SKIPPED")
EVENT_TYPES = (
    "sla.timer.started",
    "sla.timer.due",
    "sla.escalation.triggered",
    "sla.timer.cancelled",
    "sla.timer.completed",
    "sla.timer.failed",
    "sla.timer.retried",
)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now():
    return text("now()")


tenants = Table(
    "tenants",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # The prefix names a key in logs and finds its row; only a hash of the secret is kept.
    Column("prefix", Text, nullable=False, unique=True),
    Column("key_hash", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    Column("revoked_at", DateTime(timezone=True)),
)

sla_timers = Table(
    "sla_timers",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), ForeignKey("tenants.id"), nullable=False),
    Column("lead_id", Text, nullable=False),
    Column("sla_contract_id", Text, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("due_at", DateTime(timezone=True), nullable=False),
    Column("window_seconds", Integer, nullable=False),
    Column("status", Text, nullable=False, server_default="ACTIVE"),
    Column("processing_status", Text, nullable=False, server_default="PENDING"),
    Column("correlation_id", Text, nullable=False),
    Column("idempotency_key", Text),
    # sha256 of the canonical request body, to tell a replay from a conflicting reuse of a key.
    Column("request_fingerprint", Text),
    Column("escalation_steps", JSONB, nullable=False),
    Column("metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    # How many steps of the (ordered) ladder have been recorded.
    Column("steps_done", Integer, nullable=False, server_default="0"),
    Column("next_fire_at", DateTime(timezone=True)),
    Column("claim_token", UUID(as_uuid=True)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, server_default="0"),
    # How many times a dead letter was re-armed (POST /v1/timers/{id}/retry); part of
    # the keys of the failed and retried events, so each dead letter gets its own.
    Column("retries", Integer, nullable=False, server_default="0"),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("next_attempt_at", DateTime(timezone=True)),
    Column("last_error", Text),
    Column("breached", Boolean),
    Column("cancel_reason", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    Column("completed_at", DateTime(timezone=True)),
    Column("cancelled_at", DateTime(timezone=True)),
    CheckConstraint(_in("status", TIMER_STATUSES), name="status"),
    CheckConstraint(_in("processing_status", PROCESSING_STATUSES), name="processing_status"),
    CheckConstraint("window_seconds > 0", name="window_positive"),
    # Partial: timers started without a key cost this index nothing.
    Index(
        "uq_sla_timers_tenant_id_idempotency_key",
        "tenant_id",
        "idempotency_key",
        unique=True,
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    # Also serves lookups by (tenant, lead).
    UniqueConstraint("tenant_id", "lead_id", "sla_contract_id", "started_at"),
    # The claim query (due work in due order) and the lease rescue. Its
    # predicate leaves out processing_status on purpose: claiming a timer then
    # changes no indexed column, so PostgreSQL updates the row in place (HOT)
    # without touching any index. The claim filters PROCESSING rows out.
    Index(
        "ix_sla_timers_next_fire_at",
        "next_fire_at",
        postgresql_where=text("next_fire_at IS NOT NULL"),
    ),
    # Tenant listings (newest first, keyset pagination).
    Index("ix_sla_timers_tenant_created", "tenant_id", "created_at", "id"),
    # At most one open timer per lead and contract: a new start supersedes the old one.
    Index(
        "uq_sla_timers_open_per_lead_contract",
        "tenant_id",
        "lead_id",
        "sla_contract_id",
        unique=True,
        postgresql_where=text("status IN ('ACTIVE', 'DUE', 'ESCALATED')"),
    ),
    # Room on each page for the claim's in-place (HOT) update.
    postgresql_with={"fillfactor": 80},
)

sla_escalation_events = Table(
    "sla_escalation_events",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("lead_id", Text, nullable=False),
    Column(
        "timer_id",
        UUID(as_uuid=True),
        ForeignKey("sla_timers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("escalation_step", Integer, nullable=False),
    Column("executed_at", DateTime(timezone=True), nullable=False),
    Column("outcome", Text, nullable=False),
    Column("escalation_config", JSONB, nullable=False),
    Column("correlation_id", Text, nullable=False),
    Column("error_message", Text),
    Column("idempotency_key", Text, nullable=False),
    CheckConstraint(_in("outcome", STEP_OUTCOMES), name="outcome"),
    # The exactly-once guarantee for steps lives here, not in application code.
    # It also serves the lookup of a timer's steps (by tenant and timer).
    UniqueConstraint("tenant_id", "timer_id", "escalation_step"),
    UniqueConstraint("tenant_id", "idempotency_key"),
)

outbox_events = Table(
    "outbox_events",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("event_type", Text, nullable=False),
    Column("timer_id", UUID(as_uuid=True)),
    Column("payload", JSONB, nullable=False),
    Column("correlation_id", Text, nullable=False),
    # One event per (timer, kind, step): "<timer_id>:<kind>[:<step>]".
    Column("idempotency_key", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    # Delivery bookkeeping, used by webhook delivery.
    Column("delivery_status", Text, nullable=False, server_default="PENDING"),
    Column("delivery_attempts", Integer, nullable=False, server_default="0"),
    Column("next_delivery_at", DateTime(timezone=True), server_default=_now()),
    Column("delivered_at", DateTime(timezone=True)),
    Column("last_delivery_error", Text),
    CheckConstraint(_in("event_type", EVENT_TYPES), name="event_type"),
    CheckConstraint(
        _in("delivery_status", ("PENDING", "DELIVERED", "FAILED")), name="delivery_status"
    ),
    UniqueConstraint("tenant_id", "idempotency_key"),
    Index(
        "ix_outbox_events_pending",
        "next_delivery_at",
        postgresql_where=text("delivery_status = 'PENDING'"),
    ),
)
