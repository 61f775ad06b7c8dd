"""baseline: the schema of numbered migration 12

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

from coordinator.store.sql.schema import Int, Real, Str

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_tokens",
        sa.Column("id", Str, nullable=False),
        sa.Column("name", Str, nullable=False),
        sa.Column("role", Str, nullable=False),
        sa.Column("secret_hash", Str, nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("expires_at", Real, nullable=True),
        sa.Column("revoked", Int, server_default="0", nullable=False),
        sa.Column("tenant", Str, server_default="default", nullable=False),
        sa.Column("unlimited", Int, server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.create_index("api_tokens_by_tenant", ["tenant", "id"], unique=False)

    op.create_table(
        "applications",
        sa.Column("id", Str, nullable=False),
        sa.Column("tenant", Str, server_default="default", nullable=False),
        sa.Column("name", Str, nullable=False),
        sa.Column("description", Str, server_default="", nullable=False),
        sa.Column("source_type", Str, server_default="", nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("updated_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "name"),
    )
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.create_index(
            "applications_by_tenant", ["tenant", "created_at", "id"], unique=False
        )

    op.create_table(
        "audit_log",
        sa.Column("id", Int, autoincrement=True, nullable=False),
        sa.Column("at", Real, nullable=False),
        sa.Column("kind", Str, nullable=False),
        sa.Column("principal_kind", Str, server_default="", nullable=False),
        sa.Column("principal", Str, server_default="", nullable=False),
        sa.Column("tenant", Str, server_default="", nullable=False),
        sa.Column("method", Str, server_default="", nullable=False),
        sa.Column("route", Str, server_default="", nullable=False),
        sa.Column("path", Str, server_default="", nullable=False),
        sa.Column("target", Str, server_default="{}", nullable=False),
        sa.Column("status", Int, server_default="0", nullable=False),
        sa.Column("client_ip", Str, server_default="", nullable=False),
        sa.Column("event", Str, server_default="", nullable=False),
        sa.Column("subject", Str, server_default="", nullable=False),
        sa.Column("actor", Str, server_default="", nullable=False),
        sa.Column("data", Str, server_default="{}", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("audit_log_by_principal", ["principal"], unique=False)
        batch_op.create_index("audit_log_by_time", ["at"], unique=False)

    op.create_table(
        "environments",
        sa.Column("id", Str, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("name", Str, nullable=False),
        sa.Column("order_index", Int, server_default="0", nullable=False),
        sa.Column("body", Str, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "name"),
    )
    op.create_table(
        "issued_certs",
        sa.Column("serial", Str, nullable=False),
        sa.Column("machine_id", Str, nullable=False),
        sa.Column("issued_at", Real, nullable=False),
        sa.Column("not_after", Real, nullable=False),
        sa.PrimaryKeyConstraint("serial"),
    )
    op.create_table(
        "join_tokens",
        sa.Column("id", Str, nullable=False),
        sa.Column("secret_hash", Str, nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("expires_at", Real, nullable=False),
        sa.Column("used_at", Real, nullable=True),
        sa.Column("used_by", Str, server_default="", nullable=False),
        sa.Column("description", Str, server_default="", nullable=False),
        sa.Column("machine_id", Str, server_default="", nullable=False),
        sa.Column("tenant", Str, server_default="default", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("join_tokens", schema=None) as batch_op:
        batch_op.create_index("join_tokens_by_tenant", ["tenant", "created_at"], unique=False)

    op.create_table(
        "machine_drift",
        sa.Column("machine_id", Str, nullable=False),
        sa.Column("entries", Str, nullable=False),
        sa.Column("checked_at", Real, nullable=False),
        sa.Column("reported_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("machine_id"),
    )
    op.create_table(
        "machine_groups",
        sa.Column("id", Str, nullable=False),
        sa.Column("tenant", Str, server_default="default", nullable=False),
        sa.Column("name", Str, nullable=False),
        sa.Column("description", Str, server_default="", nullable=False),
        sa.Column("selector", Str, server_default="{}", nullable=False),
        sa.Column("machines", Str, server_default="[]", nullable=False),
        sa.Column("builtin", Int, server_default="0", nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("updated_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "name"),
    )
    op.create_table(
        "machine_samples",
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
    with op.batch_alter_table("machine_samples", schema=None) as batch_op:
        batch_op.create_index("machine_samples_by_tenant", ["tenant", "minute"], unique=False)

    op.create_table(
        "machine_stickers",
        sa.Column("machine_id", Str, nullable=False),
        sa.Column("deployment", Str, nullable=False),
        sa.Column("body", Str, nullable=False),
        sa.Column("reported_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("machine_id", "deployment"),
    )
    op.create_table(
        "machines",
        sa.Column("id", Str, nullable=False),
        sa.Column("hostname", Str, server_default="", nullable=False),
        sa.Column("primary_ip", Str, server_default="", nullable=False),
        sa.Column("metadata", Str, server_default="{}", nullable=False),
        sa.Column("capabilities", Str, server_default="[]", nullable=False),
        sa.Column("state", Str, server_default="disconnected", nullable=False),
        sa.Column("state_since", Real, server_default="0", nullable=False),
        sa.Column("last_seen", Real, server_default="0", nullable=False),
        sa.Column("enrolled_at", Real, nullable=False),
        sa.Column("cert_serial", Str, server_default="", nullable=False),
        sa.Column("cert_not_after", Real, server_default="0", nullable=False),
        sa.Column("revoked", Int, server_default="0", nullable=False),
        sa.Column("agent_version", Str, server_default="", nullable=False),
        sa.Column("desired_revision", Int, server_default="0", nullable=False),
        sa.Column("applied_revision", Int, server_default="0", nullable=False),
        sa.Column("metadata_patch", Str, server_default="{}", nullable=False),
        sa.Column("tenant", Str, server_default="default", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.create_index("machines_by_tenant", ["tenant", "id"], unique=False)

    op.create_table(
        "promotions",
        sa.Column("id", Str, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("environment_id", Str, nullable=False),
        sa.Column("status", Str, nullable=False),
        sa.Column("release_id", Str, server_default="", nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("body", Str, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.create_index("promotions_by_env", ["environment_id", "created_at"], unique=False)
        batch_op.create_index("promotions_by_release", ["release_id"], unique=False)

    op.create_table(
        "rate_limit_hits",
        sa.Column("class", Str, nullable=False),
        sa.Column("key", Str, nullable=False),
        sa.Column("at", Real, nullable=False),
    )
    with op.batch_alter_table("rate_limit_hits", schema=None) as batch_op:
        batch_op.create_index("rate_limit_hits_by_time", ["class", "at"], unique=False)

    op.create_table(
        "revoked_certs",
        sa.Column("serial", Str, nullable=False),
        sa.Column("machine_id", Str, nullable=False),
        sa.Column("revoked_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("serial"),
    )
    op.create_table(
        "task_definitions",
        sa.Column("definition_id", Str, nullable=False),
        sa.Column("tenant", Str, server_default="default", nullable=False),
        sa.Column("alias", Str, nullable=False),
        sa.Column("image", Str, nullable=False),
        sa.Column("group_name", Str, server_default="", nullable=False),
        sa.Column("command", Str, server_default="", nullable=False),
        sa.Column("memory", Int, server_default="0", nullable=False),
        sa.Column("cpu", Int, server_default="0", nullable=False),
        sa.Column("env", Str, server_default="[]", nullable=False),
        sa.Column("tags", Str, server_default="[]", nullable=False),
        sa.Column("retries", Int, server_default="0", nullable=False),
        sa.Column("created_at", Real, server_default="0", nullable=False),
        sa.Column("updated_at", Real, server_default="0", nullable=False),
        sa.Column("deleted", Int, server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("definition_id"),
    )
    with op.batch_alter_table("task_definitions", schema=None) as batch_op:
        batch_op.create_index("task_definitions_by_alias", ["tenant", "alias"], unique=False)

    op.create_table(
        "task_logs",
        sa.Column("run_id", Str, nullable=False),
        sa.Column("offset", Int, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "offset"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "task_run_events",
        sa.Column("id", Int, autoincrement=True, nullable=False),
        sa.Column("run_id", Str, nullable=False),
        sa.Column("at", Real, nullable=False),
        sa.Column("reason", Str, nullable=False),
        sa.Column("message", Str, server_default="", nullable=False),
        sa.Column("source", Str, server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("task_run_events", schema=None) as batch_op:
        batch_op.create_index("task_run_events_by_run", ["run_id"], unique=False)

    op.create_table(
        "task_runs",
        sa.Column("run_id", Str, nullable=False),
        sa.Column("tenant", Str, server_default="default", nullable=False),
        sa.Column("definition_id", Str, nullable=False),
        sa.Column("alias", Str, server_default="", nullable=False),
        sa.Column("image", Str, server_default="", nullable=False),
        sa.Column("group_name", Str, server_default="", nullable=False),
        sa.Column("cluster", Str, server_default="default", nullable=False),
        sa.Column("status", Str, nullable=False),
        sa.Column("seq", Int, nullable=False),
        sa.Column("command", Str, server_default="", nullable=False),
        sa.Column("memory", Int, server_default="0", nullable=False),
        sa.Column("cpu", Int, server_default="0", nullable=False),
        sa.Column("env", Str, server_default="[]", nullable=False),
        sa.Column("run_tags", Str, server_default="{}", nullable=False),
        sa.Column("engine", Str, server_default="", nullable=False),
        sa.Column("description", Str, server_default="", nullable=False),
        sa.Column("machine_id", Str, server_default="", nullable=False),
        sa.Column("machine_host", Str, server_default="", nullable=False),
        sa.Column("exit_code", Int, nullable=True),
        sa.Column("exit_reason", Str, server_default="", nullable=False),
        sa.Column("queued_at", Real, server_default="0", nullable=False),
        sa.Column("started_at", Real, nullable=True),
        sa.Column("finished_at", Real, nullable=True),
        sa.Column("acked", Int, server_default="0", nullable=False),
        sa.Column("stop_requested", Int, server_default="0", nullable=False),
        sa.Column("retries", Int, server_default="0", nullable=False),
        sa.Column("log_size", Int, server_default="0", nullable=False),
        sa.Column("log_total", Int, server_default="-1", nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
    )
    with op.batch_alter_table("task_runs", schema=None) as batch_op:
        batch_op.create_index("task_runs_by_definition", ["tenant", "definition_id"], unique=False)
        batch_op.create_index("task_runs_by_status", ["status"], unique=False)

    op.create_table(
        "tenants",
        sa.Column("name", Str, nullable=False),
        sa.Column("created_at", Real, server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "unit_states",
        sa.Column("name", Str, nullable=False),
        sa.Column("machine_id", Str, nullable=False),
        sa.Column("hash", Str, server_default="", nullable=False),
        sa.Column("load_state", Str, server_default="", nullable=False),
        sa.Column("active_state", Str, server_default="", nullable=False),
        sa.Column("sub_state", Str, server_default="", nullable=False),
        sa.Column("main_pid", Int, server_default="0", nullable=False),
        sa.Column("image_digest", Str, server_default="", nullable=False),
        sa.Column("message", Str, server_default="", nullable=False),
        sa.Column("updated_at", Real, nullable=False),
        sa.Column("target_state", Str, server_default="", nullable=False),
        sa.PrimaryKeyConstraint("name", "machine_id"),
    )
    with op.batch_alter_table("unit_states", schema=None) as batch_op:
        batch_op.create_index("unit_states_by_machine", ["machine_id"], unique=False)

    op.create_table(
        "units",
        sa.Column("tenant", Str, server_default="default", nullable=False),
        sa.Column("name", Str, nullable=False),
        sa.Column("options", Str, nullable=False),
        sa.Column("hash", Str, nullable=False),
        sa.Column("desired_state", Str, nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("updated_at", Real, nullable=False),
        sa.Column("pinned", Int, server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("tenant", "name"),
    )
    op.create_table(
        "users",
        sa.Column("id", Int, autoincrement=True, nullable=False),
        sa.Column("username", Str, nullable=False),
        sa.Column("email", Str, server_default="", nullable=False),
        sa.Column("password_hash", Str, nullable=False),
        sa.Column("is_staff", Int, server_default="0", nullable=False),
        sa.Column("disabled", Int, server_default="0", nullable=False),
        sa.Column("permissions", Str, server_default="[]", nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "webhooks",
        sa.Column("id", Int, autoincrement=True, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("url", Str, nullable=False),
        sa.Column("events", Str, server_default="[]", nullable=False),
        sa.Column("secret", Str, nullable=False),
        sa.Column("active", Int, server_default="1", nullable=False),
        sa.Column("created_by", Str, server_default="", nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.create_index("webhooks_by_tenant", ["tenant"], unique=False)

    op.create_table(
        "webops_databases",
        sa.Column("id", Int, autoincrement=True, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("name", Str, nullable=False),
        sa.Column("pg_name", Str, nullable=False),
        sa.Column("password", Str, nullable=False),
        sa.Column("host", Str, nullable=False),
        sa.Column("port", Int, nullable=False),
        sa.Column("deployment_id", Int, server_default="0", nullable=False),
        sa.Column("created_by", Str, server_default="", nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pg_name"),
        sa.UniqueConstraint("tenant", "name"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "webops_db_backups",
        sa.Column("id", Int, autoincrement=True, nullable=False),
        sa.Column("database_id", Int, nullable=False),
        sa.Column("path", Str, nullable=False),
        sa.Column("size", Int, nullable=False),
        sa.Column("sha256", Str, nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("webops_db_backups", schema=None) as batch_op:
        batch_op.create_index("webops_db_backups_by_db", ["database_id", "id"], unique=False)

    op.create_table(
        "webops_deployments",
        sa.Column("id", Int, autoincrement=True, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("name", Str, nullable=False),
        sa.Column("repo_url", Str, nullable=False),
        sa.Column("branch", Str, nullable=False),
        sa.Column("project_type", Str, server_default="", nullable=False),
        sa.Column("domain", Str, server_default="", nullable=False),
        sa.Column("port", Int, server_default="0", nullable=False),
        sa.Column("machine_id", Str, server_default="", nullable=False),
        sa.Column("status", Str, nullable=False),
        sa.Column("env", Str, server_default="{}", nullable=False),
        sa.Column("build_seq", Int, server_default="0", nullable=False),
        sa.Column("live_build", Str, server_default="", nullable=False),
        sa.Column("building", Str, server_default="", nullable=False),
        sa.Column("unit", Str, server_default="", nullable=False),
        sa.Column("files", Str, server_default="[]", nullable=False),
        sa.Column("env_example", Str, server_default="{}", nullable=False),
        sa.Column("created_by", Str, server_default="", nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("updated_at", Real, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "name"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("webops_deployments", schema=None) as batch_op:
        batch_op.create_index("webops_by_machine", ["machine_id"], unique=False)

    op.create_table(
        "application_versions",
        sa.Column("application_id", Str, nullable=False),
        sa.Column("number", Int, nullable=False),
        sa.Column("label", Str, nullable=False),
        sa.Column("source_config", Str, nullable=False),
        sa.Column("digest", Str, nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.ForeignKeyConstraint(["application_id"], ["applications.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("application_id", "number"),
        sa.UniqueConstraint("application_id", "label"),
    )
    op.create_table(
        "deployments",
        sa.Column("id", Str, nullable=False),
        sa.Column("tenant", Str, server_default="default", nullable=False),
        sa.Column("name", Str, nullable=False),
        sa.Column("application_id", Str, nullable=False),
        sa.Column("group_id", Str, nullable=False),
        sa.Column("application_version", Str, server_default="", nullable=False),
        sa.Column("status", Str, server_default="Created", nullable=False),
        sa.Column("current_release", Str, server_default="", nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("updated_at", Real, nullable=False),
        sa.ForeignKeyConstraint(
            ["application_id"],
            ["applications.id"],
        ),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["machine_groups.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "name"),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.create_index("deployments_by_tenant", ["tenant", "created_at", "id"], unique=False)

    op.create_table(
        "env_targets",
        sa.Column("id", Str, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("environment_id", Str, nullable=False),
        sa.Column("name", Str, nullable=False),
        sa.Column("machine_id", Str, server_default="", nullable=False),
        sa.Column("body", Str, nullable=False),
        sa.ForeignKeyConstraint(
            ["environment_id"],
            ["environments.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "name"),
    )
    with op.batch_alter_table("env_targets", schema=None) as batch_op:
        batch_op.create_index("env_targets_by_env", ["environment_id"], unique=False)

    op.create_table(
        "freeze_windows",
        sa.Column("id", Str, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("environment_id", Str, nullable=False),
        sa.Column("start_at", Real, nullable=False),
        sa.Column("end_at", Real, nullable=False),
        sa.Column("body", Str, nullable=False),
        sa.ForeignKeyConstraint(["environment_id"], ["environments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("freeze_windows", schema=None) as batch_op:
        batch_op.create_index("freeze_windows_by_env", ["environment_id", "end_at"], unique=False)

    op.create_table(
        "placements",
        sa.Column("tenant", Str, server_default="default", nullable=False),
        sa.Column("unit", Str, nullable=False),
        sa.Column("machine_id", Str, nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant", "unit"], ["units.tenant", "units.name"], ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant", "unit", "machine_id"),
    )
    with op.batch_alter_table("placements", schema=None) as batch_op:
        batch_op.create_index(
            "placements_by_machine", ["machine_id", "tenant", "unit"], unique=False
        )

    op.create_table(
        "target_groups",
        sa.Column("id", Str, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("environment_id", Str, nullable=False),
        sa.Column("name", Str, nullable=False),
        sa.Column("body", Str, nullable=False),
        sa.ForeignKeyConstraint(["environment_id"], ["environments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("environment_id", "name"),
    )
    op.create_table(
        "user_tenants",
        sa.Column("user_id", Int, nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("position", Int, server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant"],
            ["tenants.name"],
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "tenant"),
    )
    op.create_table(
        "user_tokens",
        sa.Column("id", Str, nullable=False),
        sa.Column("user_id", Int, nullable=False),
        sa.Column("name", Str, server_default="", nullable=False),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("permissions", Str, server_default="[]", nullable=False),
        sa.Column("secret_hash", Str, nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("expires_at", Real, nullable=False),
        sa.Column("revoked", Int, server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("user_tokens", schema=None) as batch_op:
        batch_op.create_index("user_tokens_by_user", ["user_id"], unique=False)

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", Int, autoincrement=True, nullable=False),
        sa.Column("webhook_id", Int, nullable=False),
        sa.Column("delivery", Str, nullable=False),
        sa.Column("event", Str, nullable=False),
        sa.Column("attempt", Int, nullable=False),
        sa.Column("status_code", Int, server_default="0", nullable=False),
        sa.Column("ok", Int, server_default="0", nullable=False),
        sa.Column("error", Str, server_default="", nullable=False),
        sa.Column("duration_ms", Int, server_default="0", nullable=False),
        sa.Column("at", Real, nullable=False),
        sa.ForeignKeyConstraint(["webhook_id"], ["webhooks.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.create_index("webhook_deliveries_by_hook", ["webhook_id", "id"], unique=False)

    op.create_table(
        "webops_logs",
        sa.Column("id", Int, autoincrement=True, nullable=False),
        sa.Column("deployment_id", Int, nullable=False),
        sa.Column("level", Str, nullable=False),
        sa.Column("message", Str, nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["webops_deployments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("webops_logs", schema=None) as batch_op:
        batch_op.create_index("webops_logs_by_deployment", ["deployment_id", "id"], unique=False)

    op.create_table(
        "deployment_targets",
        sa.Column("deployment_id", Str, nullable=False),
        sa.Column("machine_id", Str, nullable=False),
        sa.Column("release_id", Str, nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("deployment_id", "machine_id"),
    )
    with op.batch_alter_table("deployment_targets", schema=None) as batch_op:
        batch_op.create_index("deployment_targets_by_machine", ["machine_id"], unique=False)

    op.create_table(
        "releases",
        sa.Column("id", Str, nullable=False),
        sa.Column("deployment_id", Str, nullable=False),
        sa.Column("seq", Int, nullable=False),
        sa.Column("body", Str, nullable=False),
        sa.Column("status", Str, nullable=False),
        sa.Column("batch", Int, server_default="0", nullable=False),
        sa.Column("message", Str, server_default="", nullable=False),
        sa.Column("rolled_back", Int, server_default="0", nullable=False),
        sa.Column("created_at", Real, nullable=False),
        sa.Column("updated_at", Real, nullable=False),
        sa.Column("finished_at", Real, server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["deployment_id"], ["deployments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("deployment_id", "seq"),
    )
    op.create_table(
        "release_jobs",
        sa.Column("id", Str, nullable=False),
        sa.Column("release_id", Str, nullable=False),
        sa.Column("machine_id", Str, nullable=False),
        sa.Column("batch", Int, nullable=False),
        sa.Column("status", Str, server_default="Created", nullable=False),
        sa.Column("message", Str, server_default="", nullable=False),
        sa.Column("started_at", Real, server_default="0", nullable=False),
        sa.Column("healthy_since", Real, server_default="0", nullable=False),
        sa.Column("finished_at", Real, server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["release_id"], ["releases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("release_id", "machine_id"),
    )

    # the rows the numbered migrations made with their tables: the built-in group of
    # every machine of the default tenant, and the default tenant itself
    now = time.time()
    op.bulk_insert(
        sa.table(
            "machine_groups",
            sa.column("id", Str),
            sa.column("tenant", Str),
            sa.column("name", Str),
            sa.column("description", Str),
            sa.column("builtin", Int),
            sa.column("created_at", Real),
            sa.column("updated_at", Real),
        ),
        [
            {
                "id": "c9a3f5e2-5d0b-5c1e-9a57-0f2f3c1d0e01",
                "tenant": "default",
                "name": "default",
                "description": "Every machine of the fleet",
                "builtin": 1,
                "created_at": now,
                "updated_at": now,
            }
        ],
    )
    op.bulk_insert(
        sa.table("tenants", sa.column("name", Str), sa.column("created_at", Real)),
        [{"name": "default", "created_at": 0.0}],
    )


def downgrade() -> None:
    op.drop_table("release_jobs")
    op.drop_table("releases")
    with op.batch_alter_table("deployment_targets", schema=None) as batch_op:
        batch_op.drop_index("deployment_targets_by_machine")

    op.drop_table("deployment_targets")
    with op.batch_alter_table("webops_logs", schema=None) as batch_op:
        batch_op.drop_index("webops_logs_by_deployment")

    op.drop_table("webops_logs")
    with op.batch_alter_table("webhook_deliveries", schema=None) as batch_op:
        batch_op.drop_index("webhook_deliveries_by_hook")

    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("user_tokens", schema=None) as batch_op:
        batch_op.drop_index("user_tokens_by_user")

    op.drop_table("user_tokens")
    op.drop_table("user_tenants")
    op.drop_table("target_groups")
    with op.batch_alter_table("placements", schema=None) as batch_op:
        batch_op.drop_index("placements_by_machine")

    op.drop_table("placements")
    with op.batch_alter_table("freeze_windows", schema=None) as batch_op:
        batch_op.drop_index("freeze_windows_by_env")

    op.drop_table("freeze_windows")
    with op.batch_alter_table("env_targets", schema=None) as batch_op:
        batch_op.drop_index("env_targets_by_env")

    op.drop_table("env_targets")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index("deployments_by_tenant")

    op.drop_table("deployments")
    op.drop_table("application_versions")
    with op.batch_alter_table("webops_deployments", schema=None) as batch_op:
        batch_op.drop_index("webops_by_machine")

    op.drop_table("webops_deployments")
    with op.batch_alter_table("webops_db_backups", schema=None) as batch_op:
        batch_op.drop_index("webops_db_backups_by_db")

    op.drop_table("webops_db_backups")
    op.drop_table("webops_databases")
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_index("webhooks_by_tenant")

    op.drop_table("webhooks")
    op.drop_table("users")
    op.drop_table("units")
    with op.batch_alter_table("unit_states", schema=None) as batch_op:
        batch_op.drop_index("unit_states_by_machine")

    op.drop_table("unit_states")
    op.drop_table("tenants")
    with op.batch_alter_table("task_runs", schema=None) as batch_op:
        batch_op.drop_index("task_runs_by_status")
        batch_op.drop_index("task_runs_by_definition")

    op.drop_table("task_runs")
    with op.batch_alter_table("task_run_events", schema=None) as batch_op:
        batch_op.drop_index("task_run_events_by_run")

    op.drop_table("task_run_events")
    op.drop_table("task_logs")
    with op.batch_alter_table("task_definitions", schema=None) as batch_op:
        batch_op.drop_index("task_definitions_by_alias")

    op.drop_table("task_definitions")
    op.drop_table("revoked_certs")
    with op.batch_alter_table("rate_limit_hits", schema=None) as batch_op:
        batch_op.drop_index("rate_limit_hits_by_time")

    op.drop_table("rate_limit_hits")
    with op.batch_alter_table("promotions", schema=None) as batch_op:
        batch_op.drop_index("promotions_by_release")
        batch_op.drop_index("promotions_by_env")

    op.drop_table("promotions")
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_index("machines_by_tenant")

    op.drop_table("machines")
    op.drop_table("machine_stickers")
    with op.batch_alter_table("machine_samples", schema=None) as batch_op:
        batch_op.drop_index("machine_samples_by_tenant")

    op.drop_table("machine_samples")
    op.drop_table("machine_groups")
    op.drop_table("machine_drift")
    with op.batch_alter_table("join_tokens", schema=None) as batch_op:
        batch_op.drop_index("join_tokens_by_tenant")

    op.drop_table("join_tokens")
    op.drop_table("issued_certs")
    op.drop_table("environments")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("audit_log_by_time")
        batch_op.drop_index("audit_log_by_principal")

    op.drop_table("audit_log")
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.drop_index("applications_by_tenant")

    op.drop_table("applications")
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index("api_tokens_by_tenant")

    op.drop_table("api_tokens")
