"""WebOps bulk jobs in the database (#21, #23): a job started through one coordinator is
polled through any, and survives the restart of the one that runs it (as interrupted).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from coordinator.store.sql.migrations import walls
from coordinator.store.sql.schema import Int, Real, Str

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webops_bulk_jobs",
        sa.Column("id", Str, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("action", Str, nullable=False),
        sa.Column("total", Int, nullable=False),
        sa.Column("status", Str, nullable=False),
        sa.Column("results", Str, server_default="[]", nullable=False),
        sa.Column("runner", Str, server_default="", nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("finished_at", Real, server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("webops_bulk_jobs", schema=None) as batch_op:
        batch_op.create_index("webops_bulk_jobs_by_created", ["created_at"], unique=False)
    walls.tenant_wall("webops_bulk_jobs")


def downgrade() -> None:
    op.drop_table("webops_bulk_jobs")
