"""open timers counted from their index: ``uq_sla_timers_open_per_lead_contract``
carries the columns the open-timer counts read

The state gauges of ``/metrics`` (every open timer, all tenants) and the open
part of ``GET /v1/stats`` (a tenant's open timers) read ``status``,
``started_at``, ``due_at``, ``paused_at`` and ``next_fire_at`` of every open
timer. With these columns in the open-timer index (``INCLUDE``, not keys: the
uniqueness is unchanged) both are index-only scans of the open timers,
instead of a heap page per few open timers. The write cost is bytes, not
entries: every update that changes one of them already changes ``status`` or
``next_fire_at`` (a fire, a pause, a resume, a close), so it is already not
HOT and already adds an entry to this index; a claim changes none of them and
stays HOT.

On a large database this rebuilds the index (open timers only): run it in a
release phase with the workers stopped, or build it CONCURRENTLY by hand first
under another name and swap (docs/scaling.md).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 14:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OPEN = "status IN ('ACTIVE', 'DUE', 'ESCALATED', 'PAUSED')"
INCLUDE = ["status", "started_at", "due_at", "paused_at", "next_fire_at"]


def _open_per_lead(include: list[str] | None) -> None:
    op.drop_index("uq_sla_timers_open_per_lead_contract", table_name="sla_timers")
    op.create_index(
        "uq_sla_timers_open_per_lead_contract",
        "sla_timers",
        ["tenant_id", "lead_id", "sla_contract_id"],
        unique=True,
        postgresql_include=include or [],
        postgresql_where=sa.text(OPEN),
    )


def upgrade() -> None:
    _open_per_lead(INCLUDE)


def downgrade() -> None:
    _open_per_lead(None)
