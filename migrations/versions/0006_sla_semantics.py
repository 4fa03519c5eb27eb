"""SLA semantics: contracts, business-hours calendars, pause and resume,
warnings before breach, repeating escalation steps

- ``calendars``: a tenant's business-hours calendars (zone, weekly hours,
  holidays), keyed by the tenant's own id.
- ``sla_contracts`` and ``sla_contract_versions``: a contract is a name for its
  current version; each PUT writes version N+1. Timers copy the version they
  start under (``sla_timers.contract_snapshot``), so later edits never reach them.
- ``sla_timers``:
  - ``contract_version`` and ``contract_snapshot``: the resolved policy, for audit;
  - ``calendar``: the resolved calendar the timer counts in (NULL: every hour counts);
  - ``warning_thresholds`` and ``warnings_done``: percentages of the window, and
    how many of them are recorded (sent or skipped), as ``steps_done`` for steps;
  - ``paused_at``, ``pause_reason``, ``paused_from`` (the status to return to),
    ``paused_seconds`` (wall time paused, in total) and ``shift_seconds`` (the
    working time the schedule moved by: every pending instant is
    ``calendar + (offset + shift_seconds)`` from the start);
  - status ``PAUSED``, which counts as open: one open timer per lead and contract.
- ``sla_escalation_events.repeat``: the repeat of a step (0 for its first run);
  the exactly-once key becomes (tenant, timer, step, repeat).
- ``sla_timer_warnings``: one row per (timer, threshold), SENT or SKIPPED: the
  exactly-once key of warnings.
- Event types ``sla.timer.warning``, ``sla.timer.paused`` and ``sla.timer.resumed``;
  lead event outcomes ``paused`` and ``resumed`` (a contract's pause_on/resume_on).

Row-level security on the new tables as 0005 sets it up.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 11:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP, MAINTENANCE = "sla_app", "sla_maintenance"
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
ALL_TENANTS = "coalesce(current_setting('app.all_tenants', true), '') = 'on'"

_EVENTS_BEFORE = (
    "sla.timer.started",
    "sla.timer.due",
    "sla.escalation.triggered",
    "sla.timer.cancelled",
    "sla.timer.completed",
    "sla.timer.failed",
    "sla.timer.retried",
    "webhook.disabled",
)
_EVENTS_AFTER = (*_EVENTS_BEFORE, "sla.timer.warning", "sla.timer.paused", "sla.timer.resumed")
_STATUSES_BEFORE = ("ACTIVE", "DUE", "ESCALATED", "CANCELLED", "COMPLETED")
_STATUSES_AFTER = (*_STATUSES_BEFORE, "PAUSED")
_OPEN_BEFORE = ("ACTIVE", "DUE", "ESCALATED")
_OPEN_AFTER = (*_OPEN_BEFORE, "PAUSED")
_LEAD_OUTCOMES_BEFORE = ("started", "completed", "cancelled", "ignored")
_LEAD_OUTCOMES_AFTER = (*_LEAD_OUTCOMES_BEFORE, "paused", "resumed")

# table -> privileges of sla_app
TABLES = {
    "calendars": "SELECT, INSERT, UPDATE, DELETE",
    "sla_contracts": "SELECT, INSERT, UPDATE",
    "sla_contract_versions": "SELECT, INSERT",
    "sla_timer_warnings": "SELECT, INSERT",
}


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


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _check(table: str, name: str, condition: str) -> None:
    op.drop_constraint(op.f(f"ck_{table}_{name}"), table, type_="check")
    op.create_check_constraint(op.f(f"ck_{table}_{name}"), table, condition)


def _open_per_lead(statuses: tuple[str, ...]) -> None:
    op.drop_index("uq_sla_timers_open_per_lead_contract", table_name="sla_timers")
    op.create_index(
        "uq_sla_timers_open_per_lead_contract",
        "sla_timers",
        ["tenant_id", "lead_id", "sla_contract_id"],
        unique=True,
        postgresql_where=sa.text(_in("status", statuses)),
    )


def _timestamp(name: str, **kw) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), **kw)


def _now(name: str) -> sa.Column:
    return _timestamp(name, server_default=sa.text("now()"), nullable=False)


def _tenant() -> sa.Column:
    return sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False)


def upgrade() -> None:
    # ---- calendars
    op.create_table(
        "calendars",
        _tenant(),
        sa.Column("calendar_id", sa.Text(), nullable=False),
        sa.Column("timezone", sa.Text(), nullable=False),
        sa.Column("weekly_hours", postgresql.JSONB(), nullable=False),
        sa.Column(
            "holidays", postgresql.JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
        sa.Column("holiday_country", sa.Text()),
        sa.Column("holiday_subdivision", sa.Text()),
        _now("created_at"),
        _now("updated_at"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_calendars_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "calendar_id", name=op.f("pk_calendars")),
    )

    # ---- contracts and their versions
    op.create_table(
        "sla_contracts",
        _tenant(),
        sa.Column("contract_id", sa.Text(), nullable=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
        _timestamp("retired_at"),
        _now("created_at"),
        _now("updated_at"),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sla_contracts_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "contract_id", name=op.f("pk_sla_contracts")),
    )
    op.create_table(
        "sla_contract_versions",
        _tenant(),
        sa.Column("contract_id", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("window_seconds", sa.Integer(), nullable=False),
        sa.Column("calendar_id", sa.Text()),
        sa.Column(
            "warning_thresholds",
            postgresql.ARRAY(sa.Integer()),
            server_default=sa.text("'{}'::integer[]"),
            nullable=False,
        ),
        sa.Column("escalation_steps", postgresql.JSONB(), nullable=False),
        sa.Column(
            "pause_on",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
        sa.Column(
            "resume_on",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
        _now("created_at"),
        sa.CheckConstraint(
            "window_seconds > 0", name=op.f("ck_sla_contract_versions_window_positive")
        ),
        sa.CheckConstraint("version > 0", name=op.f("ck_sla_contract_versions_version_positive")),
        sa.ForeignKeyConstraint(
            ["tenant_id", "contract_id"],
            ["sla_contracts.tenant_id", "sla_contracts.contract_id"],
            name=op.f("fk_sla_contract_versions_tenant_id_sla_contracts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "contract_id", "version", name=op.f("pk_sla_contract_versions")
        ),
    )

    # ---- timers: the resolved policy, warnings, pauses
    op.add_column("sla_timers", sa.Column("contract_version", sa.Integer()))
    op.add_column("sla_timers", sa.Column("contract_snapshot", postgresql.JSONB()))
    op.add_column("sla_timers", sa.Column("calendar", postgresql.JSONB()))
    op.add_column(
        "sla_timers",
        sa.Column(
            "warning_thresholds",
            postgresql.ARRAY(sa.Integer()),
            server_default=sa.text("'{}'::integer[]"),
            nullable=False,
        ),
    )
    op.add_column(
        "sla_timers", sa.Column("warnings_done", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column("sla_timers", _timestamp("paused_at"))
    op.add_column("sla_timers", sa.Column("pause_reason", sa.Text()))
    op.add_column("sla_timers", sa.Column("paused_from", sa.Text()))
    op.add_column(
        "sla_timers", sa.Column("paused_seconds", sa.Float(), server_default="0", nullable=False)
    )
    op.add_column(
        "sla_timers", sa.Column("shift_seconds", sa.Float(), server_default="0", nullable=False)
    )
    _check("sla_timers", "status", _in("status", _STATUSES_AFTER))
    _open_per_lead(_OPEN_AFTER)

    # ---- steps: repeats
    op.add_column(
        "sla_escalation_events",
        sa.Column("repeat", sa.Integer(), server_default="0", nullable=False),
    )
    op.drop_constraint(
        "uq_sla_escalation_events_tenant_id_timer_id_escalation_step",
        "sla_escalation_events",
        type_="unique",
    )
    op.create_unique_constraint(
        op.f("uq_sla_escalation_events_tenant_id_timer_id_escalation_step_repeat"),
        "sla_escalation_events",
        ["tenant_id", "timer_id", "escalation_step", "repeat"],
    )

    # ---- warnings: exactly once per (timer, threshold)
    op.create_table(
        "sla_timer_warnings",
        _tenant(),
        sa.Column("timer_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("threshold", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        # The instant the warning was for, and when it was recorded.
        _timestamp("scheduled_at", nullable=False),
        _timestamp("recorded_at", nullable=False),
        sa.Column("correlation_id", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('SENT', 'SKIPPED')", name=op.f("ck_sla_timer_warnings_outcome")
        ),
        sa.CheckConstraint(
            "threshold > 0 AND threshold < 100", name=op.f("ck_sla_timer_warnings_threshold_range")
        ),
        sa.ForeignKeyConstraint(
            ["timer_id"],
            ["sla_timers.id"],
            name=op.f("fk_sla_timer_warnings_timer_id_sla_timers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "tenant_id", "timer_id", "threshold", name=op.f("pk_sla_timer_warnings")
        ),
    )

    _check("outbox_events", "event_type", _in("event_type", _EVENTS_AFTER))
    _check("lead_events", "outcome", _in("outcome", _LEAD_OUTCOMES_AFTER))

    # ---- row-level security, as 0005
    for table, app_privileges in TABLES.items():
        _if_role(APP, f"GRANT {app_privileges} ON {table} TO {APP}")
        _if_role(MAINTENANCE, f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {MAINTENANCE}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        _if_role(
            APP,
            f"CREATE POLICY tenant_isolation ON {table} TO {APP} "
            f"USING (tenant_id = {TENANT}) WITH CHECK (tenant_id = {TENANT})",
        )
        _if_role(
            MAINTENANCE,
            f"CREATE POLICY maintenance ON {table} TO {MAINTENANCE} USING (true) WITH CHECK (true)",
        )
        _for_owner(
            table,
            f"owner_tenant_isolation ON {table} TO {{owner}} "
            f"USING (tenant_id = {TENANT}) WITH CHECK (tenant_id = {TENANT})",
        )
        _for_owner(
            table,
            f"owner_all_tenants ON {table} TO {{owner}} "
            f"USING ({ALL_TENANTS}) WITH CHECK ({ALL_TENANTS})",
        )


def downgrade() -> None:
    # What the older schema cannot hold goes: events of the new types, step
    # repeats, paused timers (back to the status they were paused from).
    op.execute(
        "DELETE FROM outbox_events WHERE event_type IN "
        "('sla.timer.warning', 'sla.timer.paused', 'sla.timer.resumed')"
    )
    _check("outbox_events", "event_type", _in("event_type", _EVENTS_BEFORE))
    op.execute("DELETE FROM lead_events WHERE outcome IN ('paused', 'resumed')")
    _check("lead_events", "outcome", _in("outcome", _LEAD_OUTCOMES_BEFORE))
    op.drop_table("sla_timer_warnings")

    op.execute("DELETE FROM sla_escalation_events WHERE repeat > 0")
    op.drop_constraint(
        op.f("uq_sla_escalation_events_tenant_id_timer_id_escalation_step_repeat"),
        "sla_escalation_events",
        type_="unique",
    )
    op.create_unique_constraint(
        "uq_sla_escalation_events_tenant_id_timer_id_escalation_step",
        "sla_escalation_events",
        ["tenant_id", "timer_id", "escalation_step"],
    )
    op.drop_column("sla_escalation_events", "repeat")

    op.execute(
        "UPDATE sla_timers SET status = paused_from, next_fire_at = coalesce(next_fire_at, due_at) "
        "WHERE status = 'PAUSED'"
    )
    _open_per_lead(_OPEN_BEFORE)
    _check("sla_timers", "status", _in("status", _STATUSES_BEFORE))
    for column in (
        "shift_seconds",
        "paused_seconds",
        "paused_from",
        "pause_reason",
        "paused_at",
        "warnings_done",
        "warning_thresholds",
        "calendar",
        "contract_snapshot",
        "contract_version",
    ):
        op.drop_column("sla_timers", column)

    op.drop_table("sla_contract_versions")
    op.drop_table("sla_contracts")
    op.drop_table("calendars")
