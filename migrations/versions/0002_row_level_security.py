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

A login that may not create or grant roles (a PaaS owner login) skips those
steps, and grants and policies name only roles that exist: the service then
runs in single-login mode, whose policies are migration 0004's.

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
    # A login without CREATEROLE goes on without it (single-login mode).
    op.execute(
        f"""
        DO $$ BEGIN
            IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN
                CREATE ROLE {name} NOLOGIN;
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
                  WHEN insufficient_privilege THEN
                      RAISE NOTICE 'cannot create role {name}: single-login mode';
        END $$
        """
    )


def _if_role(role: str, statement: str) -> None:
    """Run ``statement`` only if ``role`` exists (it may not, see _create_role)."""
    op.execute(
        f"""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN
                EXECUTE $sql${statement}$sql$;
            END IF;
        END $$
        """
    )


def upgrade() -> None:
    for role in (APP, MAINTENANCE):
        _create_role(role)
        # The login role switches to these at connection start (-c role=...).
        # Granting needs the admin option on the role, which a PaaS owner lacks.
        op.execute(
            f"""
            DO $$ BEGIN
                IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}')
                   AND NOT pg_has_role(current_user, '{role}', 'MEMBER') THEN
                    EXECUTE format('GRANT {role} TO %I', current_user);
                END IF;
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE 'cannot grant role {role}: single-login mode';
            END $$
            """
        )
        _if_role(role, f"GRANT USAGE ON SCHEMA public TO {role}")
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

    # Authentication happens before the tenant is known: it names a key by its prefix.
    _if_role(
        APP,
        f"CREATE POLICY key_lookup ON api_keys FOR SELECT TO {APP} USING (prefix = {KEY_PREFIX})",
    )


def downgrade() -> None:
    op.execute("DROP POLICY IF EXISTS key_lookup ON api_keys")
    for table in TABLES:
        op.execute(f"DROP POLICY IF EXISTS maintenance ON {table}")
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        for role in (APP, MAINTENANCE):
            _if_role(role, f"REVOKE ALL ON {table} FROM {role}")
    for role in (APP, MAINTENANCE):
        _if_role(role, f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {role}")
        _if_role(role, f"REVOKE USAGE ON SCHEMA public FROM {role}")
