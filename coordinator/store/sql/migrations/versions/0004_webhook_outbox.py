"""webhook outbox (#23): events wait in the database for the lease holder to deliver

An event's deliveries are stored when it happens, on whichever coordinator it happened;
the coordinator holding the lease delivers them, retries with backoff and removes each
when it is done, so a crash or a failover loses none. On PostgreSQL the rows are read
only by background work: like the audit log, the policy walls reading only.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from coordinator.store.sql.migrations import walls
from coordinator.store.sql.schema import Int, Real, Str

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "webhook_outbox",
        sa.Column("id", Int, autoincrement=True, nullable=False),
        sa.Column("webhook_id", Int, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("event", Str, nullable=False),
        sa.Column("delivery", Str, nullable=False),
        sa.Column("body", Str, nullable=False),
        sa.Column("attempts", Int, server_default="0", nullable=False),
        sa.Column("next_at", Real, nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.ForeignKeyConstraint(["webhook_id"], ["webhooks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("webhook_outbox", schema=None) as batch_op:
        batch_op.create_index("webhook_outbox_by_due", ["next_at"], unique=False)
    walls.read_wall("webhook_outbox")


def downgrade() -> None:
    op.drop_table("webhook_outbox")
