"""disabled tenants; step and warning rows refer to their timer by (tenant_id, id)

- ``tenants.disabled_at``: a disabled tenant's API keys answer 403 (the CLI's
  ``tenants disable`` / ``enable``); its timers keep running.
- ``uq_sla_timers_tenant_id_id``: a timer is also unique by (tenant, id), and
  the step and warning rows' foreign keys name their timer by that pair rather
  than by ``id`` alone. The sharding rule (docs/scaling.md): foreign keys and
  unique constraints of tenant tables are led by ``tenant_id``, so a table
  distributed by ``tenant_id`` keeps them. It also makes the ON DELETE CASCADE
  of retention (models/retention.py) cheap: the cascade's lookup
  ``tenant_id = $1 AND timer_id = $2`` is served by the rows' unique index,
  where ``timer_id = $1`` alone had no index to use.

The primary key stays ``id``: the firing path finds claimed timers by id.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ROW_TABLES = ("sla_escalation_events", "sla_timer_warnings")


def upgrade() -> None:
    op.add_column("tenants", sa.Column("disabled_at", sa.DateTime(timezone=True)))
    op.create_unique_constraint("uq_sla_timers_tenant_id_id", "sla_timers", ["tenant_id", "id"])
    for table in ROW_TABLES:
        op.drop_constraint(f"fk_{table}_timer_id_sla_timers", table, type_="foreignkey")
        op.create_foreign_key(
            f"fk_{table}_tenant_id_sla_timers",
            table,
            "sla_timers",
            ["tenant_id", "timer_id"],
            ["tenant_id", "id"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    for table in ROW_TABLES:
        op.drop_constraint(f"fk_{table}_tenant_id_sla_timers", table, type_="foreignkey")
        op.create_foreign_key(
            f"fk_{table}_timer_id_sla_timers",
            table,
            "sla_timers",
            ["timer_id"],
            ["id"],
            ondelete="CASCADE",
        )
    op.drop_constraint("uq_sla_timers_tenant_id_id", "sla_timers", type_="unique")
    op.drop_column("tenants", "disabled_at")
