"""monitoring series downsampled by hour (#21): minutes kept 2 days, hours 31 days

The hourly rows are brought up to date with each sample (the average of the hour's
minutes so far), so periods of days read hours instead of tens of thousands of minutes
per machine. Existing minutes are averaged into hours here, once. Like the per-minute
series, the policy walls reading only.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from coordinator.store.sql.migrations import walls
from coordinator.store.sql.schema import Int, Real, Str

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "machine_samples_hourly",
        sa.Column("machine_id", Str, nullable=False),
        sa.Column("minute", Int, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("cpu_percent", Real, nullable=False),
        sa.Column("load1", Real, nullable=False),
        sa.Column("memory_total", Int, nullable=False),
        sa.Column("memory_used", Int, nullable=False),
        sa.Column("disk_total", Int, nullable=False),
        sa.Column("disk_used", Int, nullable=False),
        sa.Column("uptime_s", Real, nullable=False),
        sa.PrimaryKeyConstraint("machine_id", "minute"),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("machine_samples_hourly", schema=None) as batch_op:
        batch_op.create_index(
            "machine_samples_hourly_by_tenant", ["tenant", "minute"], unique=False
        )
    op.execute(
        "INSERT INTO machine_samples_hourly (machine_id, minute, tenant, cpu_percent, load1,"
        " memory_total, memory_used, disk_total, disk_used, uptime_s)"
        " SELECT machine_id, (minute / 60) * 60, MAX(tenant), AVG(cpu_percent), AVG(load1),"
        " MAX(memory_total), CAST(AVG(memory_used) AS BIGINT), MAX(disk_total),"
        " CAST(AVG(disk_used) AS BIGINT), MAX(uptime_s)"
        " FROM machine_samples GROUP BY machine_id, (minute / 60) * 60"
    )
    walls.read_wall("machine_samples_hourly")


def downgrade() -> None:
    op.drop_table("machine_samples_hourly")
