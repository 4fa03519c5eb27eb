"""Reports: the compliance stats' daily rollup, and the indexes of the
timeline and the stats (docs/reports.md)

- ``sla_stats_rollup``: per tenant, UTC hour and UTC day (``hours`` 1 or 24)
  of ``started_at``, and contract, the figures of the timers that have closed
  (completed or cancelled), which never change again: one counter per (kind,
  key, outcome), e.g. (completed_within), (ttc, 3600) or (step, 2, FAILED).
  A range reads whole days, whole hours at its ends, and counts only the
  minutes at its very ends from the timers themselves.
- ``sla_stats_positions``: per tenant, the feed position (txid, event id) up
  to which the close events are folded into ``sla_stats_rollup``, and the
  transaction id (``rows_txid``) up to which step and warning rows are. The
  fold reads below the snapshot's horizon, as the pull feed does, so nothing
  is missed or folded twice; the stats add what is past the positions live.
- ``sla_escalation_events.txid`` and ``sla_timer_warnings.txid``: the writing
  transaction's id, as ``outbox_events.txid`` (set by default: no writer
  changes), indexed by tenant: step and warning rows never change once
  written, so they are folded as they come, open timers' included. Rows
  written before this migration share its transaction's id.
- ``sla_stats_ttc_bin(started, completed)``: a time to complete in whole
  seconds rounded up to the rollup's grid, every second up to 100 s, then two
  significant digits (101 s -> 110, 3,601 s -> 3,700): the percentiles are
  read from these bins, so they are exact to 100 s and within 10% above.
- ``ix_sla_timers_tenant_started``: a tenant's timers by start, for the
  partial hours at the ends of a stats range, which the rollup cannot cover.
- ``ix_outbox_events_timer_id``: a timer's events, for its timeline.

Nothing is folded here: a tenant without a position starts from the first
event, so the worker's first fold takes in every close so far (each close
wrote its event), and until then the stats count them live.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP, MAINTENANCE = "sla_app", "sla_maintenance"
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
ALL_TENANTS = "coalesce(current_setting('app.all_tenants', true), '') = 'on'"

# table -> privileges of sla_app: the API reads, the worker folds.
TABLES = {"sla_stats_rollup": "SELECT", "sla_stats_positions": "SELECT"}
# Step and warning rows: insert-only, folded by their writing transaction.
ROW_TABLES = ("sla_escalation_events", "sla_timer_warnings")
TXID = "(pg_current_xact_id())::text::bigint"


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


TTC_BIN = """
CREATE FUNCTION sla_stats_ttc_bin(started timestamptz, completed timestamptz)
RETURNS integer LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN s <= 100 THEN s
                ELSE least(2000000000, ceil(s / p) * p) END::integer
    FROM (SELECT greatest(0, ceil(extract(epoch FROM completed - started)))::numeric AS s) AS x,
         LATERAL (SELECT power(10::numeric, floor(log(greatest(s, 1))) - 1) AS p) AS y
$$
"""


def upgrade() -> None:
    op.execute(TTC_BIN)
    op.create_table(
        "sla_stats_rollup",
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("hours", sa.SmallInteger(), nullable=False),
        sa.Column("bucket", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sla_contract_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("key", sa.Integer(), server_default="0", nullable=False),
        sa.Column("outcome", sa.Text(), server_default="", nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sla_stats_rollup_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.CheckConstraint("hours IN (1, 24)", name=op.f("ck_sla_stats_rollup_hours")),
        sa.PrimaryKeyConstraint(
            "tenant_id",
            "hours",
            "bucket",
            "sla_contract_id",
            "kind",
            "key",
            "outcome",
            name=op.f("pk_sla_stats_rollup"),
        ),
    )
    op.create_table(
        "sla_stats_positions",
        sa.Column("tenant_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column("txid", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("event_id", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("rows_txid", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "folded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sla_stats_positions_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_sla_stats_positions")),
    )
    for table in ROW_TABLES:
        op.add_column(
            table,
            sa.Column("txid", sa.BigInteger(), server_default=sa.text(TXID), nullable=False),
        )
        op.create_index(f"ix_{table}_tenant_txid", table, ["tenant_id", "txid"])
    op.create_index("ix_sla_timers_tenant_started", "sla_timers", ["tenant_id", "started_at"])
    op.create_index(
        "ix_outbox_events_timer_id",
        "outbox_events",
        ["timer_id"],
        postgresql_where=sa.text("timer_id IS NOT NULL"),
    )

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
    op.drop_index("ix_outbox_events_timer_id", table_name="outbox_events")
    op.drop_index("ix_sla_timers_tenant_started", table_name="sla_timers")
    for table in ROW_TABLES:
        op.drop_index(f"ix_{table}_tenant_txid", table_name=table)
        op.drop_column(table, "txid")
    op.drop_table("sla_stats_positions")
    op.drop_table("sla_stats_rollup")
    op.execute("DROP FUNCTION sla_stats_ttc_bin(timestamptz, timestamptz)")
