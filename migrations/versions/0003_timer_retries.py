"""dead letters can be retried: a retries counter and the sla.timer.retried event

``POST /v1/timers/{id}/retry`` re-arms a dead-lettered (FAILED) timer. Each
re-arm bumps ``sla_timers.retries``, which is part of the idempotency keys of
``sla.timer.failed`` and ``sla.timer.retried`` (``<timer>:failed:<retries>``,
``<timer>:retried:<retries>``): a timer that fails again after a retry gets a
new failed event instead of colliding with the first one.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 04:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = (
    "sla.timer.started",
    "sla.timer.due",
    "sla.escalation.triggered",
    "sla.timer.cancelled",
    "sla.timer.completed",
    "sla.timer.failed",
)
_AFTER = (*_BEFORE, "sla.timer.retried")


def _event_types(values: tuple[str, ...]) -> None:
    # op.f: the name is final (the metadata's naming convention would prefix it again).
    op.drop_constraint(op.f("ck_outbox_events_event_type"), "outbox_events", type_="check")
    op.create_check_constraint(
        op.f("ck_outbox_events_event_type"),
        "outbox_events",
        f"event_type IN ({', '.join(repr(v) for v in values)})",
    )


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column(
        "sla_timers", sa.Column("retries", sa.Integer(), server_default="0", nullable=False)
    )
    _event_types(_AFTER)


def downgrade() -> None:
    # Events of the new type cannot satisfy the old constraint: they go first.
    op.execute("DELETE FROM outbox_events WHERE event_type = 'sla.timer.retried'")
    _event_types(_BEFORE)
    op.drop_column("sla_timers", "retries")
