"""webhook subscriptions and deliveries, the feed's order, lead events

- ``webhook_subscriptions``: a tenant's endpoints, with their signing secrets.
- ``webhook_deliveries``: one row per (event, subscription), written by the
  statement-level trigger ``outbox_events_fan_out`` in the transaction that
  writes the events, so an event is never committed without its deliveries,
  whichever path wrote it. Only enabled subscriptions whose ``event_types``
  match (NULL: all) get one.
- ``webhook_attempts``: every attempt's status code, duration and error.
- ``lead_events``: POST /v1/lead-events' idempotency record and the lead's
  history that orders late events.
- ``outbox_events.txid``: the writing transaction's id, the feed's order
  (models/feed.py). Adding it rewrites the table once; rows written before get
  the migration's own id, which sorts them before every later event.
- The per-event delivery columns of 0001 go: delivery is per subscription now.
- ``webhook.disabled`` joins the event types.

Row-level security as 0002 and 0004 set it up: ``sla_app`` sees one tenant,
``sla_maintenance`` all, and the owner the same two scopes in single-login mode.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP, MAINTENANCE = "sla_app", "sla_maintenance"
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
ALL_TENANTS = "coalesce(current_setting('app.all_tenants', true), '') = 'on'"

_BEFORE = (
    "sla.timer.started",
    "sla.timer.due",
    "sla.escalation.triggered",
    "sla.timer.cancelled",
    "sla.timer.completed",
    "sla.timer.failed",
    "sla.timer.retried",
)
_AFTER = (*_BEFORE, "webhook.disabled")

# table -> (column naming the tenant, privileges of sla_app)
TABLES = {
    "webhook_subscriptions": ("tenant_id", "SELECT, INSERT, UPDATE, DELETE"),
    # INSERT: the fan-out trigger runs as the writer of the events; UPDATE: retry, replay.
    "webhook_deliveries": ("tenant_id", "SELECT, INSERT, UPDATE"),
    "webhook_attempts": ("tenant_id", "SELECT"),
    "lead_events": ("tenant_id", "SELECT, INSERT"),
}

FAN_OUT = """
CREATE FUNCTION fan_out_outbox_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One statement per inserting statement, however many events it wrote.
    INSERT INTO webhook_deliveries (tenant_id, subscription_id, event_id, timer_id)
    SELECT e.tenant_id, s.id, e.id, e.timer_id
    FROM new_events e
    JOIN webhook_subscriptions s
      ON s.tenant_id = e.tenant_id
     AND s.enabled
     AND (s.event_types IS NULL OR e.event_type = ANY (s.event_types));
    RETURN NULL;
END
$$
"""


def _if_role(role: str, statement: str) -> None:
    op.execute(
        f"""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                EXECUTE $sql${statement}$sql$;
            END IF;
        END $$
        """
    )


def _for_owner(table: str, policy: str) -> None:
    op.execute(
        f"""
        DO $$ BEGIN
            EXECUTE format($sql$CREATE POLICY {policy.format(owner="%I")}$sql$,
                (SELECT tableowner FROM pg_tables
                 WHERE schemaname = current_schema() AND tablename = '{table}'));
        END $$
        """
    )


def _event_types(values: tuple[str, ...]) -> None:
    op.drop_constraint(op.f("ck_outbox_events_event_type"), "outbox_events", type_="check")
    op.create_check_constraint(
        op.f("ck_outbox_events_event_type"),
        "outbox_events",
        f"event_type IN ({', '.join(repr(v) for v in values)})",
    )


def _timestamp(name: str, **kw) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), **kw)


def _now(name: str) -> sa.Column:
    return _timestamp(name, server_default=sa.text("now()"), nullable=False)


def upgrade() -> None:
    # ---- outbox_events: the feed's order replaces per-event delivery columns
    op.drop_index("ix_outbox_events_pending", table_name="outbox_events")
    op.drop_constraint(op.f("ck_outbox_events_delivery_status"), "outbox_events", type_="check")
    for column in (
        "delivery_status",
        "delivery_attempts",
        "next_delivery_at",
        "delivered_at",
        "last_delivery_error",
    ):
        op.drop_column("outbox_events", column)
    op.add_column(
        "outbox_events",
        sa.Column(
            "txid",
            sa.BigInteger(),
            server_default=sa.text("(pg_current_xact_id())::text::bigint"),
            nullable=False,
        ),
    )
    op.create_index("ix_outbox_events_tenant_txid", "outbox_events", ["tenant_id", "txid", "id"])
    _event_types(_AFTER)

    # ---- webhooks
    op.create_table(
        "webhook_subscriptions",
        sa.Column(
            "id",
            postgresql.UUID(as_uuid=True),
            server_default=sa.text("gen_random_uuid()"),
            primary_key=True,
        ),
        sa.Column(
            "tenant_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey(
                "tenants.id",
                ondelete="CASCADE",
                name=op.f("fk_webhook_subscriptions_tenant_id_tenants"),
            ),
            nullable=False,
        ),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("event_types", postgresql.ARRAY(sa.Text())),
        sa.Column("description", sa.Text()),
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("previous_secret", sa.Text()),
        _timestamp("previous_secret_expires_at"),
        _timestamp("failing_since"),
        _timestamp("last_success_at"),
        _timestamp("disabled_at"),
        sa.Column("disabled_reason", sa.Text()),
        sa.Column("disable_count", sa.Integer(), server_default="0", nullable=False),
        _now("created_at"),
        _now("updated_at"),
        sa.CheckConstraint("url ~ '^https?://'", name=op.f("ck_webhook_subscriptions_url_scheme")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_subscriptions")),
    )
    op.create_index(
        "ix_webhook_subscriptions_tenant_created",
        "webhook_subscriptions",
        ["tenant_id", "created_at", "id"],
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "subscription_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey(
                "webhook_subscriptions.id",
                ondelete="CASCADE",
                name=op.f("fk_webhook_deliveries_subscription_id_webhook_subscriptions"),
            ),
            nullable=False,
        ),
        sa.Column(
            "event_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "outbox_events.id",
                ondelete="CASCADE",
                name=op.f("fk_webhook_deliveries_event_id_outbox_events"),
            ),
            nullable=False,
        ),
        sa.Column("timer_id", postgresql.UUID(as_uuid=True)),
        sa.Column("status", sa.Text(), server_default="PENDING", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        _now("next_attempt_at"),
        sa.Column("claim_token", postgresql.UUID(as_uuid=True)),
        _timestamp("lease_expires_at"),
        _timestamp("last_attempt_at"),
        sa.Column("last_status_code", sa.Integer()),
        sa.Column("last_duration_ms", sa.Integer()),
        sa.Column("last_error", sa.Text()),
        _timestamp("delivered_at"),
        _now("created_at"),
        sa.CheckConstraint(
            "status IN ('PENDING', 'DELIVERED', 'FAILED')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "subscription_id",
            "event_id",
            name=op.f("uq_webhook_deliveries_subscription_id_event_id"),
        ),
    )
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["subscription_id", "next_attempt_at"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.create_index(
        "ix_webhook_deliveries_in_flight",
        "webhook_deliveries",
        ["subscription_id", "lease_expires_at"],
        postgresql_where=sa.text("status = 'PENDING' AND claim_token IS NOT NULL"),
    )
    op.create_index(
        "ix_webhook_deliveries_pending_timer",
        "webhook_deliveries",
        ["timer_id", "subscription_id", "event_id"],
        postgresql_where=sa.text("status = 'PENDING' AND timer_id IS NOT NULL"),
    )
    op.create_index(
        "ix_webhook_deliveries_subscription", "webhook_deliveries", ["subscription_id", "id"]
    )
    op.create_index("ix_webhook_deliveries_event_id", "webhook_deliveries", ["event_id"])

    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "delivery_id",
            sa.BigInteger(),
            sa.ForeignKey(
                "webhook_deliveries.id",
                ondelete="CASCADE",
                name=op.f("fk_webhook_attempts_delivery_id_webhook_deliveries"),
            ),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        _timestamp("attempted_at", nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_attempts")),
    )
    op.create_index("ix_webhook_attempts_delivery_id", "webhook_attempts", ["delivery_id", "id"])

    # ---- lead events
    op.create_table(
        "lead_events",
        sa.Column(
            "tenant_id",
            postgresql.UUID(as_uuid=True),
            sa.ForeignKey("tenants.id", name=op.f("fk_lead_events_tenant_id_tenants")),
            nullable=False,
        ),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("lead_id", sa.Text(), nullable=False),
        sa.Column("sla_contract_id", sa.Text(), nullable=False),
        _timestamp("occurred_at", nullable=False),
        _now("received_at"),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("timer_id", postgresql.UUID(as_uuid=True)),
        sa.CheckConstraint(
            "outcome IN ('started', 'completed', 'cancelled', 'ignored')",
            name=op.f("ck_lead_events_outcome"),
        ),
        sa.PrimaryKeyConstraint("tenant_id", "event_id", name=op.f("pk_lead_events")),
    )
    op.create_index(
        "ix_lead_events_lead",
        "lead_events",
        ["tenant_id", "lead_id", "sla_contract_id", "occurred_at"],
    )

    # ---- row-level security, as 0002 (two roles) and 0004 (single login)
    for role in (APP, MAINTENANCE):
        _if_role(role, f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")
    for table, (column, app_privileges) in TABLES.items():
        _if_role(APP, f"GRANT {app_privileges} ON {table} TO {APP}")
        _if_role(MAINTENANCE, f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {MAINTENANCE}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        _if_role(
            APP,
            f"CREATE POLICY tenant_isolation ON {table} TO {APP} "
            f"USING ({column} = {TENANT}) WITH CHECK ({column} = {TENANT})",
        )
        _if_role(
            MAINTENANCE,
            f"CREATE POLICY maintenance ON {table} TO {MAINTENANCE} USING (true) WITH CHECK (true)",
        )
        _for_owner(
            table,
            f"owner_tenant_isolation ON {table} TO {{owner}} "
            f"USING ({column} = {TENANT}) WITH CHECK ({column} = {TENANT})",
        )
        _for_owner(
            table,
            f"owner_all_tenants ON {table} TO {{owner}} "
            f"USING ({ALL_TENANTS}) WITH CHECK ({ALL_TENANTS})",
        )

    # ---- the fan-out: runs as the writer of the events, under its policies
    op.execute(FAN_OUT)
    op.execute(
        "CREATE TRIGGER outbox_events_fan_out AFTER INSERT ON outbox_events "
        "REFERENCING NEW TABLE AS new_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION fan_out_outbox_events()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER outbox_events_fan_out ON outbox_events")
    op.execute("DROP FUNCTION fan_out_outbox_events()")
    for table in ("webhook_attempts", "webhook_deliveries", "webhook_subscriptions", "lead_events"):
        op.drop_table(table)  # with its policies, grants and indexes

    op.execute("DELETE FROM outbox_events WHERE event_type = 'webhook.disabled'")
    _event_types(_BEFORE)
    op.drop_index("ix_outbox_events_tenant_txid", table_name="outbox_events")
    op.drop_column("outbox_events", "txid")
    op.add_column(
        "outbox_events",
        sa.Column("delivery_status", sa.Text(), server_default="PENDING", nullable=False),
    )
    op.add_column(
        "outbox_events",
        sa.Column("delivery_attempts", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column("outbox_events", _timestamp("next_delivery_at", server_default=sa.text("now()")))
    op.add_column("outbox_events", _timestamp("delivered_at"))
    op.add_column("outbox_events", sa.Column("last_delivery_error", sa.Text()))
    op.create_check_constraint(
        op.f("ck_outbox_events_delivery_status"),
        "outbox_events",
        "delivery_status IN ('PENDING', 'DELIVERED', 'FAILED')",
    )
    op.create_index(
        "ix_outbox_events_pending",
        "outbox_events",
        ["next_delivery_at"],
        postgresql_where=sa.text("delivery_status = 'PENDING'"),
    )
