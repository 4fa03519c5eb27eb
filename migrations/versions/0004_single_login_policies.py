"""single-login mode: the tables' owner gets the two scopes the roles have

A PaaS database (Heroku Postgres, for example) comes with one login, the
owner of the database, that cannot create or grant roles, so 0002 could
create no ``sla_app`` / ``sla_maintenance`` there. The service then connects
as that owner for everything (``SLA_DB_APP_ROLE=""`` and
``SLA_DB_MAINTENANCE_ROLE=""``), and FORCE ROW LEVEL SECURITY (0002) subjects
the owner to policies like any other role. These give it the same scopes:

- ``owner_tenant_isolation``: ``tenant_id = app.tenant_id``, as ``sla_app``;
- ``owner_key_lookup``: the one ``api_keys`` row named by ``app.api_key_prefix``;
- ``owner_all_tenants``: every row, but only in sessions started with
  ``app.all_tenants = on``, which only the maintenance engine sets
  (``models.db.make_engine``). The web process refuses to start if its
  sessions have it (``models.db.WebRoleGuard``).

The policies name the owner, so ``sla_app`` and ``sla_maintenance`` are not
affected; an owner that is a superuser bypasses them anyway. In this mode
isolation protects against application bugs (a query without its tenant
filter), not against SQL the owner itself runs: the owner may switch row-level
security off. The two-role set-up does not have that limit.

The API's role may also read ``alembic_version``: ``/readyz`` compares it with
the code's head revision.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 05:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APP = "sla_app"
TENANT = "NULLIF(current_setting('app.tenant_id', true), '')::uuid"
KEY_PREFIX = "NULLIF(current_setting('app.api_key_prefix', true), '')"
ALL_TENANTS = "coalesce(current_setting('app.all_tenants', true), '') = 'on'"

# table -> column naming the tenant
TABLES = {
    "tenants": "id",
    "api_keys": "tenant_id",
    "sla_timers": "tenant_id",
    "sla_escalation_events": "tenant_id",
    "outbox_events": "tenant_id",
}


def _for_owner(table: str, policy: str) -> None:
    """CREATE POLICY ``policy`` (the text after the table name) for the table's owner.

    The owner is looked up rather than assumed to be the migrating login: a
    superuser may run migrations on tables another login owns.
    """
    op.execute(
        f"""
        DO $$ BEGIN
            EXECUTE format($sql$CREATE POLICY {policy.format(owner="%I")}$sql$,
                (SELECT tableowner FROM pg_tables
                 WHERE schemaname = current_schema() AND tablename = '{table}'));
        END $$
        """
    )


def upgrade() -> None:
    for table, column in TABLES.items():
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
    _for_owner(
        "api_keys",
        f"owner_key_lookup ON api_keys FOR SELECT TO {{owner}} USING (prefix = {KEY_PREFIX})",
    )
    # Only if 0002 could create the role (not in single-login mode).
    op.execute(
        f"""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP}') THEN
                GRANT SELECT ON alembic_version TO {APP};
            END IF;
        END $$
        """
    )


def downgrade() -> None:
    op.execute(
        f"""
        DO $$ BEGIN
            IF EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP}') THEN
                REVOKE SELECT ON alembic_version FROM {APP};
            END IF;
        END $$
        """
    )
    op.execute("DROP POLICY owner_key_lookup ON api_keys")
    for table in TABLES:
        op.execute(f"DROP POLICY owner_all_tenants ON {table}")
        op.execute(f"DROP POLICY owner_tenant_isolation ON {table}")
