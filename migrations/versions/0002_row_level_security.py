"""row-level security: sla_app sees one tenant, sla_maintenance sees all

The service never acts as the tables' owner. The API's connections take the
role ``sla_app``, whose policies compare ``tenant_id`` with the transaction
setting ``app.tenant_id``: a query that forgets its tenant filter finds nothing
rather than another tenant's rows, and a write for another tenant fails. The
only other door is ``app.api_key_prefix``, which lets authentication read the
one key row whose prefix the caller presents. Workers take ``sla_maintenance``,
the one role whose policies span tenants (sweeping, firing, delivery).

FORCE ROW LEVEL SECURITY subjects the owner too, unless it is a superuser.
Roles are cluster-wide, so they are created only if missing and are left in
place by the downgrade (another database may use them).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 05:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP, MAINTENANCE = "sla_app", "sla_maintenance"
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
KEY_PREFIX = "NULLIF(current_setting('app.api_key_prefix', true), '')"

# table -> (column naming the tenant, privileges of sla_app)
TABLES = {
    "tenants": ("id", "SELECT, INSERT"),
    "api_keys": ("tenant_id", "SELECT, INSERT, UPDATE"),
    "sla_timers": ("tenant_id", "SELECT, INSERT, UPDATE"),
    "sla_escalation_events": ("tenant_id", "SELECT, INSERT, UPDATE"),
    "outbox_events": ("tenant_id", "SELECT, INSERT"),
}


def _create_role(name: str) -> None:
    # Concurrent migrations of two databases may race to create the same role.
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
                CREATE ROLE {name} NOLOGIN;
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
        END $$
        """
    )


def upgrade() -> None:
    for role in (APP, MAINTENANCE):
        _create_role(role)
        # The login role switches to these at connection start (-c role=...).
        op.execute(
            f"""
            DO $$ BEGIN
                IF NOT pg_has_role(current_user, '{role}', 'MEMBER') THEN
                    EXECUTE format('GRANT {role} TO %I', current_user);
                END IF;
            END $$
            """
        )
        op.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
        op.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}")

    for table, (column, app_privileges) in TABLES.items():
        op.execute(f"GRANT {app_privileges} ON {table} TO {APP}")
        op.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {MAINTENANCE}")
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} TO {APP} "
            f"USING ({column} = {TENANT}) WITH CHECK ({column} = {TENANT})"
        )
        op.execute(
            f"CREATE POLICY maintenance ON {table} TO {MAINTENANCE} USING (true) WITH CHECK (true)"
        )

    # Authentication happens before the tenant is known: it names a key by its prefix.
    op.execute(
        f"CREATE POLICY key_lookup ON api_keys FOR SELECT TO {APP} USING (prefix = {KEY_PREFIX})"
    )


def downgrade() -> None:
    op.execute("DROP POLICY key_lookup ON api_keys")
    for table in TABLES:
        op.execute(f"DROP POLICY maintenance ON {table}")
        op.execute(f"DROP POLICY tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        op.execute(f"REVOKE ALL ON {table} FROM {APP}, {MAINTENANCE}")
    for role in (APP, MAINTENANCE):
        op.execute(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}")
        op.execute(f"REVOKE USAGE ON SCHEMA public FROM {role}")
