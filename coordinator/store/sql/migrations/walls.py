"""PostgreSQL row-level security for the migrations (#23): the two walls a tenant-owned
table gets (see versions/0002). Each does nothing on SQLite (no row-level security)."""

from __future__ import annotations

from alembic import op

VISIBLE = (
    "COALESCE(current_setting('moorage.tenant', true), '') = ''"
    " OR tenant = current_setting('moorage.tenant', true)"
)
"""A row a connection sees: every row when it is unscoped, else its tenant's."""


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def tenant_wall(table: str) -> None:
    """Reads and writes only of the connection's tenant."""
    if not _postgresql():
        return
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_wall ON {table} USING ({VISIBLE}) WITH CHECK ({VISIBLE})")


def read_wall(table: str) -> None:
    """Reads only of the connection's tenant; writes by background work for any."""
    if not _postgresql():
        return
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
    op.execute(f"CREATE POLICY tenant_wall_read ON {table} FOR SELECT USING ({VISIBLE})")
    op.execute(f"CREATE POLICY tenant_wall_insert ON {table} FOR INSERT WITH CHECK (true)")
    op.execute(f"CREATE POLICY tenant_wall_update ON {table} FOR UPDATE USING (true)")
    op.execute(f"CREATE POLICY tenant_wall_delete ON {table} FOR DELETE USING (true)")
