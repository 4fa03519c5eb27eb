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
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from .schema_base import in_ as _in
from .schema_base import metadata
from .schema_base import now as _now

TIMER_STATUSES = ("ACTIVE", "DUE", "ESCALATED", "CANCELLED", "COMPLETED", "PAUSED")
# PAUSED is open: a paused timer still holds its lead and contract.
OPEN_STATUSES = ("ACTIVE", "DUE", "ESCALATED", "PAUSED")
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
    "webhook.disabled",
    "sla.timer.warning",
    "sla.timer.paused",
    "sla.timer.resumed",
)
DELIVERY_STATUSES = ("PENDING", "DELIVERED", "FAILED")
LEAD_EVENT_OUTCOMES = ("started", "completed", "cancelled", "ignored", "paused", "resumed")
# The feed's position of an event: its writing transaction's id (a 64-bit xid8).
TXID = text("(pg_current_xact_id())::text::bigint")


tenants = Table(
    "tenants",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column("name", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    # A disabled tenant's API keys answer 403; its timers keep running.
    Column("disabled_at", DateTime(timezone=True)),
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
    Column("id", UUID(as_uuid=True), nullable=False),
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
    # The contract version the timer started under (NULL: no contract) and the
    # resolved policy it follows, for audit: later contract edits never reach it.
    Column("contract_version", Integer),
    Column("contract_snapshot", JSONB),
    # The business-hours calendar it counts in (models/calendars.py); NULL: every hour.
    Column("calendar", JSONB),
    # Percentages of the window; warnings_done counts those recorded (sent or
    # skipped), in ascending order, as steps_done does for the ladder.
    Column(
        "warning_thresholds", ARRAY(Integer), nullable=False, server_default=text("'{}'::integer[]")
    ),
    Column("warnings_done", Integer, nullable=False, server_default="0"),
    # A pause: when, why, and the status a resume returns to. paused_seconds is
    # the wall time paused in total; shift_seconds the working time the schedule
    # moved by (every pending instant is offset + shift_seconds of working time
    # after started_at).
    Column("paused_at", DateTime(timezone=True)),
    Column("pause_reason", Text),
    Column("paused_from", Text),
    Column("paused_seconds", Float, nullable=False, server_default="0"),
    Column("shift_seconds", Float, nullable=False, server_default="0"),
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
    # Keys led by tenant_id (the sharding rule, docs/scaling.md); the firing
    # path finds claimed timers by id alone.
    PrimaryKeyConstraint("tenant_id", "id"),
    Index("ix_sla_timers_id", "id"),
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
    # The stats' partial days at the ends of a range (models/stats.py).
    Index("ix_sla_timers_tenant_started", "tenant_id", "started_at"),
    # At most one open timer per lead and contract: a new start supersedes the old one.
    # It carries what the open-timer counts read (/metrics, /v1/stats), so they are
    # index-only scans (migration 0010); each of these columns changes only with
    # status or next_fire_at, so no update that was HOT stops being HOT.
    Index(
        "uq_sla_timers_open_per_lead_contract",
        "tenant_id",
        "lead_id",
        "sla_contract_id",
        unique=True,
        postgresql_include=["status", "started_at", "due_at", "paused_at", "next_fire_at"],
        postgresql_where=text(_in("status", OPEN_STATUSES)),
    ),
    # Room on each page for the claim's in-place (HOT) update.
    postgresql_with={"fillfactor": 80},
)

sla_escalation_events = Table(
    "sla_escalation_events",
    metadata,
    Column("id", BigInteger, Identity(), nullable=False),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("lead_id", Text, nullable=False),
    Column("timer_id", UUID(as_uuid=True), nullable=False),
    Column("escalation_step", Integer, nullable=False),
    # 0 for a step's first run, then 1, 2... for its repeats.
    Column("repeat", Integer, nullable=False, server_default="0"),
    Column("executed_at", DateTime(timezone=True), nullable=False),
    Column("outcome", Text, nullable=False),
    Column("escalation_config", JSONB, nullable=False),
    Column("correlation_id", Text, nullable=False),
    Column("error_message", Text),
    Column("idempotency_key", Text, nullable=False),
    # The writing transaction's id: the stats fold step rows by it (models/stats.py).
    Column("txid", BigInteger, nullable=False, server_default=TXID),
    CheckConstraint(_in("outcome", STEP_OUTCOMES), name="outcome"),
    # The exactly-once guarantee for steps lives here, not in application code.
    # It also serves the lookup of a timer's steps (by tenant and timer). The
    # idempotency_key is derived from it (<timer>-<step>[-r<repeat>]): no index
    # of its own, one B-tree insertion less per fire (migration 0011).
    UniqueConstraint("tenant_id", "timer_id", "escalation_step", "repeat"),
    Index("ix_sla_escalation_events_tenant_txid", "tenant_id", "txid"),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(
        ["tenant_id", "timer_id"], ["sla_timers.tenant_id", "sla_timers.id"], ondelete="CASCADE"
    ),
)

outbox_events = Table(
    "outbox_events",
    metadata,
    Column("id", BigInteger, Identity(), nullable=False),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("event_type", Text, nullable=False),
    Column("timer_id", UUID(as_uuid=True)),
    Column("payload", JSONB, nullable=False),
    Column("correlation_id", Text, nullable=False),
    # One event per (timer, kind, step): "<timer_id>:<kind>[:<step>]".
    Column("idempotency_key", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    # The writing transaction's id (pg_current_xact_id): the feed's order. An
    # identity is not commit order, but once every transaction below a snapshot's
    # xmin has ended, no event can appear behind a (txid, id) cursor (models/feed).
    Column("txid", BigInteger, nullable=False, server_default=TXID),
    CheckConstraint(_in("event_type", EVENT_TYPES), name="event_type"),
    UniqueConstraint("tenant_id", "idempotency_key"),
    PrimaryKeyConstraint("tenant_id", "id"),
    # Deliveries name their event by id alone in the delivery path's joins.
    Index("ix_outbox_events_id", "id"),
    # The feed: a tenant's events in (txid, id) order.
    Index("ix_outbox_events_tenant_txid", "tenant_id", "txid", "id"),
    # A timer's events, for its timeline (models/timeline.py).
    Index("ix_outbox_events_timer_id", "timer_id", postgresql_where=text("timer_id IS NOT NULL")),
)

# A tenant's webhook endpoints. Each new outbox event is fanned out to the
# enabled subscriptions whose event_types match (NULL: every type) by the
# statement-level trigger of migration 0005, in the transaction that writes it.
webhook_subscriptions = Table(
    "webhook_subscriptions",
    metadata,
    Column("id", UUID(as_uuid=True), nullable=False, server_default=text("gen_random_uuid()")),
    Column(
        "tenant_id",
        UUID(as_uuid=True),
        ForeignKey("tenants.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("url", Text, nullable=False),
    Column("event_types", ARRAY(Text)),
    Column("description", Text),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    # "whsec_<base64>": signing needs the secret itself, so it is kept, not hashed.
    Column("secret", Text, nullable=False),
    # After a rotation the old secret signs beside the new one until it expires.
    Column("previous_secret", Text),
    Column("previous_secret_expires_at", DateTime(timezone=True)),
    # The first failed attempt since the last success; NULL while healthy. The
    # subscription is disabled once every attempt has failed for
    # SLA_WEBHOOK_DISABLE_AFTER_SECONDS.
    Column("failing_since", DateTime(timezone=True)),
    Column("last_success_at", DateTime(timezone=True)),
    Column("disabled_at", DateTime(timezone=True)),
    Column("disabled_reason", Text),
    # Bumped at each automatic disable: part of the webhook.disabled event's key.
    Column("disable_count", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    CheckConstraint("url ~ '^https?://'", name="url_scheme"),
    PrimaryKeyConstraint("tenant_id", "id"),
    Index("ix_webhook_subscriptions_id", "id"),
    # Listings (newest first, keyset) and the fan-out's lookup by tenant.
    Index("ix_webhook_subscriptions_tenant_created", "tenant_id", "created_at", "id"),
)

# One event to one subscription: PENDING until a 2xx (DELIVERED) or the retry
# schedule runs out (FAILED). Claimed like timers: claim_token plus a lease;
# a claim whose worker died is claimable again when the lease ends.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("id", BigInteger, Identity(), nullable=False),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("subscription_id", UUID(as_uuid=True), nullable=False),
    Column("event_id", BigInteger, nullable=False),
    # Copied from the event: one timer's events reach a subscription in event order.
    Column("timer_id", UUID(as_uuid=True)),
    Column("status", Text, nullable=False, server_default="PENDING"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    Column("claim_token", UUID(as_uuid=True)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("last_attempt_at", DateTime(timezone=True)),
    Column("last_status_code", Integer),
    Column("last_duration_ms", Integer),
    Column("last_error", Text),
    Column("delivered_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    CheckConstraint(_in("status", DELIVERY_STATUSES), name="status"),
    PrimaryKeyConstraint("tenant_id", "id"),
    UniqueConstraint("tenant_id", "subscription_id", "event_id"),
    ForeignKeyConstraint(
        ["tenant_id", "subscription_id"],
        ["webhook_subscriptions.tenant_id", "webhook_subscriptions.id"],
        ondelete="CASCADE",
    ),
    ForeignKeyConstraint(
        ["tenant_id", "event_id"],
        ["outbox_events.tenant_id", "outbox_events.id"],
        ondelete="CASCADE",
    ),
    # Claims and their outcomes update deliveries by id alone.
    Index("ix_webhook_deliveries_id", "id"),
    # The claim, per subscription: due work in due order; finished deliveries
    # leave the index.
    Index(
        "ix_webhook_deliveries_due",
        "subscription_id",
        "next_attempt_at",
        postgresql_where=text("status = 'PENDING'"),
    ),
    # A subscription's requests in flight (live leases), bounded by
    # SLA_WEBHOOK_MAX_IN_FLIGHT across all workers.
    Index(
        "ix_webhook_deliveries_in_flight",
        "subscription_id",
        "lease_expires_at",
        postgresql_where=text("status = 'PENDING' AND claim_token IS NOT NULL"),
    ),
    # Per-timer order: the timer's first pending event for a subscription. The
    # claim's lookup compares the subscription with IS NOT DISTINCT FROM, which
    # no index can serve, so only this one (timer first) fits it, whatever the
    # planner's statistics say (see models/sql/deliveries.sql).
    Index(
        "ix_webhook_deliveries_pending_timer",
        "timer_id",
        "subscription_id",
        "event_id",
        postgresql_where=text("status = 'PENDING' AND timer_id IS NOT NULL"),
    ),
    # A subscription's deliveries, newest first (GET .../deliveries).
    Index("ix_webhook_deliveries_subscription", "subscription_id", "id"),
    Index("ix_webhook_deliveries_event_id", "event_id"),
)

# Every attempt at a delivery, for GET /v1/webhooks/{id}/deliveries/{delivery_id}.
webhook_attempts = Table(
    "webhook_attempts",
    metadata,
    Column("id", BigInteger, Identity(), nullable=False),
    Column("tenant_id", UUID(as_uuid=True), nullable=False),
    Column("delivery_id", BigInteger, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("attempted_at", DateTime(timezone=True), nullable=False),
    Column("status_code", Integer),
    Column("duration_ms", Integer, nullable=False),
    Column("error", Text),
    Index("ix_webhook_attempts_delivery_id", "delivery_id", "id"),
    PrimaryKeyConstraint("tenant_id", "id"),
    ForeignKeyConstraint(
        ["tenant_id", "delivery_id"],
        ["webhook_deliveries.tenant_id", "webhook_deliveries.id"],
        ondelete="CASCADE",
    ),
)

# Lead events taken by POST /v1/lead-events: one row per (tenant, event_id), so a
# replay answers with the recorded outcome; and the lead's history, which decides
# events that arrive out of order (by occurred_at).
lead_events = Table(
    "lead_events",
    metadata,
    Column("tenant_id", UUID(as_uuid=True), ForeignKey("tenants.id"), primary_key=True),
    Column("event_id", Text, primary_key=True),
    Column("event_type", Text, nullable=False),
    Column("lead_id", Text, nullable=False),
    Column("sla_contract_id", Text, nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=_now()),
    # sha256 of the canonical event: the same event_id with another body is a conflict.
    Column("fingerprint", Text, nullable=False),
    Column("outcome", Text, nullable=False),
    Column("reason", Text),
    Column("timer_id", UUID(as_uuid=True)),
    CheckConstraint(_in("outcome", LEAD_EVENT_OUTCOMES), name="outcome"),
    Index(
        "ix_lead_events_lead",
        "tenant_id",
        "lead_id",
        "sla_contract_id",
        "occurred_at",
    ),
)

# The SLA policy's tables (warnings, calendars, contracts) register on the same
# metadata from their own module; imported here so one import sees them all.
from .schema_policies import calendars as calendars  # noqa: E402
from .schema_policies import sla_contract_versions as sla_contract_versions  # noqa: E402
from .schema_policies import sla_contracts as sla_contracts  # noqa: E402
from .schema_policies import sla_timer_warnings as sla_timer_warnings  # noqa: E402
from .schema_reports import sla_stats_positions as sla_stats_positions  # noqa: E402
from .schema_reports import sla_stats_rollup as sla_stats_rollup  # noqa: E402
