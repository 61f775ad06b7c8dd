"""coordinators and leases (#23): several coordinators on one database

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from coordinator.store.sql.schema import Int, Real, Str

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "coordinators",
        sa.Column("id", Str, nullable=False),
        sa.Column("api_url", Str, server_default="", nullable=False),
        sa.Column("hub_url", Str, server_default="", nullable=False),
        sa.Column("started_at", Real, nullable=False),
        sa.Column("heartbeat_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "leases",
        sa.Column("name", Str, nullable=False),
        sa.Column("holder", Str, nullable=False),
        sa.Column("epoch", Int, nullable=False),
        sa.Column("expires_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # SQLite adds a column with a constant default in place; batch mode copies the
    # table only where the engine needs it.
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("session_owner", Str, server_default="", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_column("session_owner")
    op.drop_table("leases")
    op.drop_table("coordinators")
