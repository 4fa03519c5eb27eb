"""tenant-led keys: every primary key, unique constraint and foreign key of a
tenant table is led by tenant_id (the sharding rule, docs/scaling.md)

- ``sla_timers``, ``outbox_events``, ``sla_escalation_events``,
  ``webhook_subscriptions``, ``webhook_deliveries``, ``webhook_attempts``: the
  primary key ``(id)`` becomes ``(tenant_id, id)``. Where the firing and
  delivery paths find rows by id alone (timers, events, subscriptions,
  deliveries), a plain index on ``id`` keeps those lookups as they were; ids
  stay unique by construction (uuid4, identities). Step and attempt rows are
  never looked up by id alone: no such index.
- ``uq_sla_timers_tenant_id_id`` (0008) is the primary key now; the step and
  warning rows' foreign keys move to it.
- ``webhook_deliveries``: its foreign keys name their subscription and event
  by ``(tenant_id, ...)``, and one delivery per ``(tenant_id, subscription_id,
  event_id)``; ``webhook_attempts`` names its delivery by ``(tenant_id,
  delivery_id)``. Every cascade finds its rows through an index that holds
  the referencing column (``ix_webhook_deliveries_event_id``,
  ``ix_webhook_deliveries_subscription``, ``ix_webhook_attempts_delivery_id``).

On a large database this rebuilds each table's primary key index: run it in a
release phase with the workers stopped, or build the new indexes CONCURRENTLY
by hand first (docs/scaling.md).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 13:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> whether lookups by id alone need a plain index on id
TABLES = {
    "sla_timers": True,
    "outbox_events": True,
    "sla_escalation_events": False,
    "webhook_subscriptions": True,
    "webhook_deliveries": True,
    "webhook_attempts": False,
}
ROW_TABLES = ("sla_escalation_events", "sla_timer_warnings")
# (table, name, columns, target, target columns), old and new
OLD_FKS = (
    ("webhook_deliveries", "fk_webhook_deliveries_subscription_id_webhook_subscriptions",
     ["subscription_id"], "webhook_subscriptions", ["id"]),
    ("webhook_deliveries", "fk_webhook_deliveries_event_id_outbox_events",
     ["event_id"], "outbox_events", ["id"]),
    ("webhook_attempts", "fk_webhook_attempts_delivery_id_webhook_deliveries",
     ["delivery_id"], "webhook_deliveries", ["id"]),
)  # fmt: skip
NEW_FKS = (
    ("webhook_deliveries", "fk_webhook_deliveries_tenant_id_webhook_subscriptions",
     ["tenant_id", "subscription_id"], "webhook_subscriptions", ["tenant_id", "id"]),
    ("webhook_deliveries", "fk_webhook_deliveries_tenant_id_outbox_events",
     ["tenant_id", "event_id"], "outbox_events", ["tenant_id", "id"]),
    ("webhook_attempts", "fk_webhook_attempts_tenant_id_webhook_deliveries",
     ["tenant_id", "delivery_id"], "webhook_deliveries", ["tenant_id", "id"]),
)  # fmt: skip


def _fks(fks, create: bool) -> None:
    for table, name, columns, target, target_columns in fks:
        if create:
            op.create_foreign_key(name, table, target, columns, target_columns, ondelete="CASCADE")
        else:
            op.drop_constraint(name, table, type_="foreignkey")


def _row_fks(create: bool) -> None:
    for table in ROW_TABLES:
        name = f"fk_{table}_tenant_id_sla_timers"
        if create:
            op.create_foreign_key(
                name, table, "sla_timers", ["tenant_id", "timer_id"], ["tenant_id", "id"],
                ondelete="CASCADE",
            )  # fmt: skip
        else:
            op.drop_constraint(name, table, type_="foreignkey")


def _primary_keys(columns: list[str], plain_id_index: bool) -> None:
    """Every table's primary key on ``columns``; with or without the plain id indexes."""
    for table, needs_index in TABLES.items():
        op.drop_constraint(f"pk_{table}", table, type_="primary")
        op.create_primary_key(f"pk_{table}", table, columns)
        if needs_index and plain_id_index:
            op.create_index(f"ix_{table}_id", table, ["id"])
        elif needs_index:
            op.drop_index(f"ix_{table}_id", table_name=table)


def upgrade() -> None:
    _row_fks(create=False)
    _fks(OLD_FKS, create=False)
    op.drop_constraint("uq_sla_timers_tenant_id_id", "sla_timers", type_="unique")
    op.drop_constraint(
        "uq_webhook_deliveries_subscription_id_event_id", "webhook_deliveries", type_="unique"
    )
    _primary_keys(["tenant_id", "id"], plain_id_index=True)
    op.create_unique_constraint(
        "uq_webhook_deliveries_tenant_id_subscription_id_event_id",
        "webhook_deliveries",
        ["tenant_id", "subscription_id", "event_id"],
    )
    _fks(NEW_FKS, create=True)
    _row_fks(create=True)


def downgrade() -> None:
    _row_fks(create=False)
    _fks(NEW_FKS, create=False)
    op.drop_constraint(
        "uq_webhook_deliveries_tenant_id_subscription_id_event_id",
        "webhook_deliveries",
        type_="unique",
    )
    _primary_keys(["id"], plain_id_index=False)
    op.create_unique_constraint(
        "uq_webhook_deliveries_subscription_id_event_id",
        "webhook_deliveries",
        ["subscription_id", "event_id"],
    )
    op.create_unique_constraint("uq_sla_timers_tenant_id_id", "sla_timers", ["tenant_id", "id"])
    _fks(OLD_FKS, create=True)
    _row_fks(create=True)
