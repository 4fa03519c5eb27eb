"""lean fire writes: a step row is unique by (tenant, timer, step, repeat) alone

A step row's ``idempotency_key`` is derived from that very key (``<timer>-<step>``
and ``-r<repeat>`` for a repeat, in the firing and closing statements), so its
own unique index repeated the guarantee of
``uq_sla_escalation_events_tenant_id_timer_id_escalation__ef55`` at the price of
one more random B-tree insertion (and uniqueness check) per fire. Exactly-once
steps rest on the (tenant_id, timer_id, escalation_step, repeat) key, which
stays, as does the column.

Downgrading rebuilds the unique index: it fails if rows written meanwhile share
a key, which the firing and closing statements never produce.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 14:20:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STEP_KEY = "uq_sla_escalation_events_tenant_id_idempotency_key"


def upgrade() -> None:
    op.drop_constraint(STEP_KEY, "sla_escalation_events", type_="unique")


def downgrade() -> None:
    op.create_unique_constraint(STEP_KEY, "sla_escalation_events", ["tenant_id", "idempotency_key"])
