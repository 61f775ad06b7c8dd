"""Tenancy in depth: PostgreSQL row-level security on every tenant-owned table.

The services already answer another tenant's object with 404; these policies are the
second wall behind them. A connection whose `moorage.tenant` setting names a tenant
(the store sets it for a request bound to one, `coordinator.store.scope`) sees and
writes only that tenant's rows; unset or '' (background work, admins, agents' sessions,
enrolment) sees every row. FORCE applies the policies to the tables' owner too, which
is the role coordinators connect as. (A PostgreSQL superuser bypasses row-level
security: coordinators should not connect as one; docs/operations.md.)

Identity tables (users' memberships and tokens) are not tenant-owned and have no policy.
The audit log and monitoring samples are written in batches by background work on
behalf of several tenants at once: their policy limits reading only.

SQLite has no row-level security: nothing to do there.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

from coordinator.store.sql.migrations import walls

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OWNED = (
    "api_tokens",
    "applications",
    "deployments",
    "env_targets",
    "environments",
    "freeze_windows",
    "join_tokens",
    "machine_groups",
    "machines",
    "placements",
    "promotions",
    "target_groups",
    "task_definitions",
    "task_runs",
    "units",
    "webhooks",
    "webops_databases",
    "webops_deployments",
)
READ_ONLY_WALL = ("audit_log", "machine_samples")


def upgrade() -> None:
    for table in OWNED:
        walls.tenant_wall(table)
    for table in READ_ONLY_WALL:
        walls.read_wall(table)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in OWNED:
        op.execute(f"DROP POLICY tenant_wall ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    for table in READ_ONLY_WALL:
        for command in ("read", "insert", "update", "delete"):
            op.execute(f"DROP POLICY tenant_wall_{command} ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
