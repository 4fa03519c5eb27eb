"""timers, steps, outbox, tenants

Revision ID: 0001
Revises:
Create Date: 2026-11-27 04:15:06.611277
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "outbox_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("timer_id", sa.UUID(), nullable=True),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("correlation_id", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("delivery_status", sa.Text(), server_default="PENDING", nullable=False),
        sa.Column("delivery_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "next_delivery_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=True,
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_delivery_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "delivery_status IN ('PENDING', 'DELIVERED', 'FAILED')",
            name=op.f("ck_outbox_events_delivery_status"),
        ),
        sa.CheckConstraint(
            "event_type IN ('sla.timer.started', 'sla.timer.due', 'sla.escalation.triggered', 'sla.timer.cancelled', 'sla.timer.completed', 'sla.timer.failed')",
            name=op.f("ck_outbox_events_event_type"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
        sa.UniqueConstraint(
            "tenant_id", "idempotency_key", name=op.f("uq_outbox_events_tenant_id_idempotency_key")
        ),
    )
    op.create_index(
        "ix_outbox_events_pending",
        "outbox_events",
        ["next_delivery_at"],
        unique=False,
        postgresql_where=sa.text("delivery_status = 'PENDING'"),
    )
    op.create_table(
        "tenants",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_index(op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"], unique=False)
    op.create_table(
        "sla_timers",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("lead_id", sa.Text(), nullable=False),
        sa.Column("sla_contract_id", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("status", sa.Text(), server_default="ACTIVE", nullable=False),
        sa.Column("processing_status", sa.Text(), server_default="PENDING", nullable=False),
        sa.Column("correlation_id", sa.Text(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("request_fingerprint", sa.Text(), nullable=True),
        sa.Column("escalation_steps", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "metadata",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("steps_done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_fire_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claim_token", sa.UUID(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("breached", sa.Boolean(), nullable=True),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "processing_status IN ('PENDING', 'PROCESSING', 'COMPLETED', 'FAILED')",
            name=op.f("ck_sla_timers_processing_status"),
        ),
        sa.CheckConstraint(
            "status IN ('ACTIVE', 'DUE', 'ESCALATED', 'CANCELLED', 'COMPLETED')",
            name=op.f("ck_sla_timers_status"),
        ),
        sa.CheckConstraint("window_seconds > 0", name=op.f("ck_sla_timers_window_positive")),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_sla_timers_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_timers")),
        sa.UniqueConstraint(
            "tenant_id",
            "lead_id",
            "sla_contract_id",
            "started_at",
            name=op.f("uq_sla_timers_tenant_id_lead_id_sla_contract_id_started_at"),
        ),
        postgresql_with={"fillfactor": 80},
    )
    op.create_index(
        "ix_sla_timers_next_fire_at",
        "sla_timers",
        ["next_fire_at"],
        unique=False,
        postgresql_where=sa.text("next_fire_at IS NOT NULL"),
    )
    op.create_index(
        "ix_sla_timers_tenant_created",
        "sla_timers",
        ["tenant_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "uq_sla_timers_open_per_lead_contract",
        "sla_timers",
        ["tenant_id", "lead_id", "sla_contract_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('ACTIVE', 'DUE', 'ESCALATED')"),
    )
    op.create_index(
        "uq_sla_timers_tenant_id_idempotency_key",
        "sla_timers",
        ["tenant_id", "idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_table(
        "sla_escalation_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("lead_id", sa.Text(), nullable=False),
        sa.Column("timer_id", sa.UUID(), nullable=False),
        sa.Column("escalation_step", sa.Integer(), nullable=False),
        sa.Column("executed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("escalation_config", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("correlation_id", sa.Text(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('SUCCESS', 'FAILED', 'SKIPPED')",
            name=op.f("ck_sla_escalation_events_outcome"),
        ),
        sa.ForeignKeyConstraint(
            ["timer_id"],
            ["sla_timers.id"],
            name=op.f("fk_sla_escalation_events_timer_id_sla_timers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sla_escalation_events")),
        sa.UniqueConstraint(
            "tenant_id",
            "idempotency_key",
            name=op.f("uq_sla_escalation_events_tenant_id_idempotency_key"),
        ),
        sa.UniqueConstraint(
            "tenant_id",
            "timer_id",
            "escalation_step",
            name=op.f("uq_sla_escalation_events_tenant_id_timer_id_escalation_step"),
        ),
    )


def downgrade() -> None:
    op.drop_table("sla_escalation_events")
    op.drop_index(
        "uq_sla_timers_tenant_id_idempotency_key",
        table_name="sla_timers",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_index(
        "uq_sla_timers_open_per_lead_contract",
        table_name="sla_timers",
        postgresql_where=sa.text("status IN ('ACTIVE', 'DUE', 'ESCALATED')"),
    )
    op.drop_index("ix_sla_timers_tenant_created", table_name="sla_timers")
    op.drop_index(
        "ix_sla_timers_next_fire_at",
        table_name="sla_timers",
        postgresql_where=sa.text("next_fire_at IS NOT NULL"),
    )
    op.drop_table("sla_timers")
    op.drop_index(op.f("ix_api_keys_tenant_id"), table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_table("tenants")
    op.drop_index(
        "ix_outbox_events_pending",
        table_name="outbox_events",
        postgresql_where=sa.text("delivery_status = 'PENDING'"),
    )
    op.drop_table("outbox_events")
