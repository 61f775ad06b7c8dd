"""The schema, once, for both engines (SQLite and PostgreSQL): every table of every
aggregate as SQLAlchemy Core `Table`s. The store's modules build their statements
from these; Alembic's revisions (`coordinator/store/sql/alembic/versions/`) create and
change them. A change to a table here is always one more revision there.

Column types are chosen so one definition means the same on both engines: text
compares and sorts bytewise (SQLite's BINARY; PostgreSQL's "C" collation, so names
page in the same order everywhere), integers are 64-bit (SQLite's INTEGER; BIGINT on
PostgreSQL, so byte offsets and revisions never overflow), times are seconds since
the epoch as doubles, booleans 0/1 integers (as the stored files always had them).
"""

from __future__ import annotations

import sqlalchemy as sa

Str = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
"""Text that sorts bytewise on both engines (the generic type: importing PostgreSQL's
dialect costs a SQLite coordinator 2 MiB, #22)."""
Int = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
"""A 64-bit integer (SQLite's INTEGER is already 64-bit, and only `INTEGER PRIMARY KEY`
is SQLite's rowid alias)."""
Id = Int
"""A surrogate key the database assigns (SQLite AUTOINCREMENT, a PostgreSQL identity)."""
Real: sa.Double[float] = sa.Double()
"""Seconds since the epoch, percentages, loads."""

metadata = sa.MetaData()


machines = sa.Table(
    "machines",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("hostname", Str, nullable=False, server_default=""),
    sa.Column("primary_ip", Str, nullable=False, server_default=""),
    sa.Column("metadata", Str, nullable=False, server_default="{}"),
    sa.Column("capabilities", Str, nullable=False, server_default="[]"),
    sa.Column("state", Str, nullable=False, server_default="disconnected"),
    sa.Column("state_since", Real, nullable=False, server_default="0"),
    sa.Column("last_seen", Real, nullable=False, server_default="0"),
    sa.Column("enrolled_at", Real, nullable=False),
    sa.Column("cert_serial", Str, nullable=False, server_default=""),
    sa.Column("cert_not_after", Real, nullable=False, server_default="0"),
    sa.Column("revoked", Int, nullable=False, server_default="0"),
    sa.Column("agent_version", Str, nullable=False, server_default=""),
    sa.Column("desired_revision", Int, nullable=False, server_default="0"),
    sa.Column("applied_revision", Int, nullable=False, server_default="0"),
    sa.Column("metadata_patch", Str, nullable=False, server_default="{}"),
    sa.Column("tenant", Str, nullable=False, server_default="default"),
    sa.Column("session_owner", Str, nullable=False, server_default=""),
    sa.Index("machines_by_tenant", "tenant", "id"),
)


join_tokens = sa.Table(
    "join_tokens",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("secret_hash", Str, nullable=False),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("expires_at", Real, nullable=False),
    sa.Column("used_at", Real, nullable=True),
    sa.Column("used_by", Str, nullable=False, server_default=""),
    sa.Column("description", Str, nullable=False, server_default=""),
    sa.Column("machine_id", Str, nullable=False, server_default=""),
    sa.Column("tenant", Str, nullable=False, server_default="default"),
    sa.Index("join_tokens_by_tenant", "tenant", "created_at"),
)


api_tokens = sa.Table(
    "api_tokens",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("name", Str, nullable=False),
    sa.Column("role", Str, nullable=False),
    sa.Column("secret_hash", Str, nullable=False),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("expires_at", Real, nullable=True),
    sa.Column("revoked", Int, nullable=False, server_default="0"),
    sa.Column("tenant", Str, nullable=False, server_default="default"),
    sa.Column("unlimited", Int, nullable=False, server_default="0"),
    sa.Index("api_tokens_by_tenant", "tenant", "id"),
)


issued_certs = sa.Table(
    "issued_certs",
    metadata,
    sa.Column("serial", Str, primary_key=True),
    sa.Column("machine_id", Str, nullable=False),
    sa.Column("issued_at", Real, nullable=False),
    sa.Column("not_after", Real, nullable=False),
)


revoked_certs = sa.Table(
    "revoked_certs",
    metadata,
    sa.Column("serial", Str, primary_key=True),
    sa.Column("machine_id", Str, nullable=False),
    sa.Column("revoked_at", Real, nullable=False),
)


unit_states = sa.Table(
    "unit_states",
    metadata,
    sa.Column("name", Str, primary_key=True),
    sa.Column("machine_id", Str, primary_key=True),
    sa.Column("hash", Str, nullable=False, server_default=""),
    sa.Column("load_state", Str, nullable=False, server_default=""),
    sa.Column("active_state", Str, nullable=False, server_default=""),
    sa.Column("sub_state", Str, nullable=False, server_default=""),
    sa.Column("main_pid", Int, nullable=False, server_default="0"),
    sa.Column("image_digest", Str, nullable=False, server_default=""),
    sa.Column("message", Str, nullable=False, server_default=""),
    sa.Column("updated_at", Real, nullable=False),
    sa.Column("target_state", Str, nullable=False, server_default=""),
    sa.Index("unit_states_by_machine", "machine_id"),
)


application_versions = sa.Table(
    "application_versions",
    metadata,
    sa.Column(
        "application_id",
        Str,
        sa.ForeignKey("applications.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("number", Int, primary_key=True),
    sa.Column("label", Str, nullable=False),
    sa.Column("source_config", Str, nullable=False),
    sa.Column("digest", Str, nullable=False),
    sa.Column("created_at", Real, nullable=False),
    sa.UniqueConstraint("application_id", "label"),
)


releases = sa.Table(
    "releases",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column(
        "deployment_id", Str, sa.ForeignKey("deployments.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("seq", Int, nullable=False),
    sa.Column("body", Str, nullable=False),
    sa.Column("status", Str, nullable=False),
    sa.Column("batch", Int, nullable=False, server_default="0"),
    sa.Column("message", Str, nullable=False, server_default=""),
    sa.Column("rolled_back", Int, nullable=False, server_default="0"),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("updated_at", Real, nullable=False),
    sa.Column("finished_at", Real, nullable=False, server_default="0"),
    sa.UniqueConstraint("deployment_id", "seq"),
)


release_jobs = sa.Table(
    "release_jobs",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("release_id", Str, sa.ForeignKey("releases.id", ondelete="CASCADE"), nullable=False),
    sa.Column("machine_id", Str, nullable=False),
    sa.Column("batch", Int, nullable=False),
    sa.Column("status", Str, nullable=False, server_default="Created"),
    sa.Column("message", Str, nullable=False, server_default=""),
    sa.Column("started_at", Real, nullable=False, server_default="0"),
    sa.Column("healthy_since", Real, nullable=False, server_default="0"),
    sa.Column("finished_at", Real, nullable=False, server_default="0"),
    sa.UniqueConstraint("release_id", "machine_id"),
)


deployment_targets = sa.Table(
    "deployment_targets",
    metadata,
    sa.Column(
        "deployment_id", Str, sa.ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("machine_id", Str, primary_key=True),
    sa.Column("release_id", Str, nullable=False),
    sa.Index("deployment_targets_by_machine", "machine_id"),
)


machine_stickers = sa.Table(
    "machine_stickers",
    metadata,
    sa.Column("machine_id", Str, primary_key=True),
    sa.Column("deployment", Str, primary_key=True),
    sa.Column("body", Str, nullable=False),
    sa.Column("reported_at", Real, nullable=False),
)


machine_drift = sa.Table(
    "machine_drift",
    metadata,
    sa.Column("machine_id", Str, primary_key=True),
    sa.Column("entries", Str, nullable=False),
    sa.Column("checked_at", Real, nullable=False),
    sa.Column("reported_at", Real, nullable=False),
)


units = sa.Table(
    "units",
    metadata,
    sa.Column("tenant", Str, primary_key=True, server_default="default"),
    sa.Column("name", Str, primary_key=True),
    sa.Column("options", Str, nullable=False),
    sa.Column("hash", Str, nullable=False),
    sa.Column("desired_state", Str, nullable=False),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("updated_at", Real, nullable=False),
    sa.Column("pinned", Int, nullable=False, server_default="0"),
)


placements = sa.Table(
    "placements",
    metadata,
    sa.Column("tenant", Str, primary_key=True, server_default="default"),
    sa.Column("unit", Str, primary_key=True),
    sa.Column("machine_id", Str, primary_key=True),
    sa.ForeignKeyConstraint(["tenant", "unit"], ["units.tenant", "units.name"], ondelete="CASCADE"),
    sa.Index("placements_by_machine", "machine_id", "tenant", "unit"),
)


machine_groups = sa.Table(
    "machine_groups",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("tenant", Str, nullable=False, server_default="default"),
    sa.Column("name", Str, nullable=False),
    sa.Column("description", Str, nullable=False, server_default=""),
    sa.Column("selector", Str, nullable=False, server_default="{}"),
    sa.Column("machines", Str, nullable=False, server_default="[]"),
    sa.Column("builtin", Int, nullable=False, server_default="0"),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("updated_at", Real, nullable=False),
    sa.UniqueConstraint("tenant", "name"),
)


applications = sa.Table(
    "applications",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("tenant", Str, nullable=False, server_default="default"),
    sa.Column("name", Str, nullable=False),
    sa.Column("description", Str, nullable=False, server_default=""),
    sa.Column("source_type", Str, nullable=False, server_default=""),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("updated_at", Real, nullable=False),
    sa.Index("applications_by_tenant", "tenant", "created_at", "id"),
    sa.UniqueConstraint("tenant", "name"),
)


deployments = sa.Table(
    "deployments",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("tenant", Str, nullable=False, server_default="default"),
    sa.Column("name", Str, nullable=False),
    sa.Column("application_id", Str, sa.ForeignKey("applications.id"), nullable=False),
    sa.Column("group_id", Str, sa.ForeignKey("machine_groups.id"), nullable=False),
    sa.Column("application_version", Str, nullable=False, server_default=""),
    sa.Column("status", Str, nullable=False, server_default="Created"),
    sa.Column("current_release", Str, nullable=False, server_default=""),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("updated_at", Real, nullable=False),
    sa.Index("deployments_by_tenant", "tenant", "created_at", "id"),
    sa.UniqueConstraint("tenant", "name"),
)


task_definitions = sa.Table(
    "task_definitions",
    metadata,
    sa.Column("definition_id", Str, primary_key=True),
    sa.Column("tenant", Str, nullable=False, server_default="default"),
    sa.Column("alias", Str, nullable=False),
    sa.Column("image", Str, nullable=False),
    sa.Column("group_name", Str, nullable=False, server_default=""),
    sa.Column("command", Str, nullable=False, server_default=""),
    sa.Column("memory", Int, nullable=False, server_default="0"),
    sa.Column("cpu", Int, nullable=False, server_default="0"),
    sa.Column("env", Str, nullable=False, server_default="[]"),
    sa.Column("tags", Str, nullable=False, server_default="[]"),
    sa.Column("retries", Int, nullable=False, server_default="0"),
    sa.Column("created_at", Real, nullable=False, server_default="0"),
    sa.Column("updated_at", Real, nullable=False, server_default="0"),
    sa.Column("deleted", Int, nullable=False, server_default="0"),
    sa.Index("task_definitions_by_alias", "tenant", "alias"),
)


task_runs = sa.Table(
    "task_runs",
    metadata,
    sa.Column("run_id", Str, primary_key=True),
    sa.Column("tenant", Str, nullable=False, server_default="default"),
    sa.Column("definition_id", Str, nullable=False),
    sa.Column("alias", Str, nullable=False, server_default=""),
    sa.Column("image", Str, nullable=False, server_default=""),
    sa.Column("group_name", Str, nullable=False, server_default=""),
    sa.Column("cluster", Str, nullable=False, server_default="default"),
    sa.Column("status", Str, nullable=False),
    sa.Column("seq", Int, nullable=False),
    sa.Column("command", Str, nullable=False, server_default=""),
    sa.Column("memory", Int, nullable=False, server_default="0"),
    sa.Column("cpu", Int, nullable=False, server_default="0"),
    sa.Column("env", Str, nullable=False, server_default="[]"),
    sa.Column("run_tags", Str, nullable=False, server_default="{}"),
    sa.Column("engine", Str, nullable=False, server_default=""),
    sa.Column("description", Str, nullable=False, server_default=""),
    sa.Column("machine_id", Str, nullable=False, server_default=""),
    sa.Column("machine_host", Str, nullable=False, server_default=""),
    sa.Column("exit_code", Int, nullable=True),
    sa.Column("exit_reason", Str, nullable=False, server_default=""),
    sa.Column("queued_at", Real, nullable=False, server_default="0"),
    sa.Column("started_at", Real, nullable=True),
    sa.Column("finished_at", Real, nullable=True),
    sa.Column("acked", Int, nullable=False, server_default="0"),
    sa.Column("stop_requested", Int, nullable=False, server_default="0"),
    sa.Column("retries", Int, nullable=False, server_default="0"),
    sa.Column("log_size", Int, nullable=False, server_default="0"),
    sa.Column("log_total", Int, nullable=False, server_default="-1"),
    sa.Index("task_runs_by_status", "status"),
    sa.Index("task_runs_by_definition", "tenant", "definition_id"),
)


task_run_events = sa.Table(
    "task_run_events",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("run_id", Str, nullable=False),
    sa.Column("at", Real, nullable=False),
    sa.Column("reason", Str, nullable=False),
    sa.Column("message", Str, nullable=False, server_default=""),
    sa.Column("source", Str, nullable=False, server_default=""),
    sa.Index("task_run_events_by_run", "run_id"),
    sqlite_autoincrement=True,
)


task_logs = sa.Table(
    "task_logs",
    metadata,
    sa.Column("run_id", Str, primary_key=True),
    sa.Column("offset", Int, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sqlite_with_rowid=False,
)


tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("name", Str, primary_key=True),
    sa.Column("created_at", Real, nullable=False, server_default="0"),
)


users = sa.Table(
    "users",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("username", Str, nullable=False),
    sa.Column("email", Str, nullable=False, server_default=""),
    sa.Column("password_hash", Str, nullable=False),
    sa.Column("is_staff", Int, nullable=False, server_default="0"),
    sa.Column("disabled", Int, nullable=False, server_default="0"),
    sa.Column("permissions", Str, nullable=False, server_default="[]"),
    sa.Column("created_at", Real, nullable=False),
    sa.UniqueConstraint("username"),
    sqlite_autoincrement=True,
)


user_tenants = sa.Table(
    "user_tenants",
    metadata,
    sa.Column("user_id", Int, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("tenant", Str, sa.ForeignKey("tenants.name"), primary_key=True),
    sa.Column("position", Int, nullable=False, server_default="0"),
)


user_tokens = sa.Table(
    "user_tokens",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("user_id", Int, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("name", Str, nullable=False, server_default=""),
    sa.Column("tenant", Str, nullable=False),
    sa.Column("permissions", Str, nullable=False, server_default="[]"),
    sa.Column("secret_hash", Str, nullable=False),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("expires_at", Real, nullable=False),
    sa.Column("revoked", Int, nullable=False, server_default="0"),
    sa.Index("user_tokens_by_user", "user_id"),
)


rate_limit_hits = sa.Table(
    "rate_limit_hits",
    metadata,
    sa.Column("class", Str, nullable=False),
    sa.Column("key", Str, nullable=False),
    sa.Column("at", Real, nullable=False),
    sa.Index("rate_limit_hits_by_time", "class", "at"),
)


audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("at", Real, nullable=False),
    sa.Column("kind", Str, nullable=False),
    sa.Column("principal_kind", Str, nullable=False, server_default=""),
    sa.Column("principal", Str, nullable=False, server_default=""),
    sa.Column("tenant", Str, nullable=False, server_default=""),
    sa.Column("method", Str, nullable=False, server_default=""),
    sa.Column("route", Str, nullable=False, server_default=""),
    sa.Column("path", Str, nullable=False, server_default=""),
    sa.Column("target", Str, nullable=False, server_default="{}"),
    sa.Column("status", Int, nullable=False, server_default="0"),
    sa.Column("client_ip", Str, nullable=False, server_default=""),
    sa.Column("event", Str, nullable=False, server_default=""),
    sa.Column("subject", Str, nullable=False, server_default=""),
    sa.Column("actor", Str, nullable=False, server_default=""),
    sa.Column("data", Str, nullable=False, server_default="{}"),
    sa.Index("audit_log_by_principal", "principal"),
    sa.Index("audit_log_by_time", "at"),
    sqlite_autoincrement=True,
)


environments = sa.Table(
    "environments",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("tenant", Str, nullable=False),
    sa.Column("name", Str, nullable=False),
    sa.Column("order_index", Int, nullable=False, server_default="0"),
    sa.Column("body", Str, nullable=False),
    sa.UniqueConstraint("tenant", "name"),
)


freeze_windows = sa.Table(
    "freeze_windows",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("tenant", Str, nullable=False),
    sa.Column(
        "environment_id", Str, sa.ForeignKey("environments.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("start_at", Real, nullable=False),
    sa.Column("end_at", Real, nullable=False),
    sa.Column("body", Str, nullable=False),
    sa.Index("freeze_windows_by_env", "environment_id", "end_at"),
)


target_groups = sa.Table(
    "target_groups",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("tenant", Str, nullable=False),
    sa.Column(
        "environment_id", Str, sa.ForeignKey("environments.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("name", Str, nullable=False),
    sa.Column("body", Str, nullable=False),
    sa.UniqueConstraint("environment_id", "name"),
)


env_targets = sa.Table(
    "env_targets",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("tenant", Str, nullable=False),
    sa.Column("environment_id", Str, sa.ForeignKey("environments.id"), nullable=False),
    sa.Column("name", Str, nullable=False),
    sa.Column("machine_id", Str, nullable=False, server_default=""),
    sa.Column("body", Str, nullable=False),
    sa.Index("env_targets_by_env", "environment_id"),
    sa.UniqueConstraint("tenant", "name"),
)


promotions = sa.Table(
    "promotions",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("tenant", Str, nullable=False),
    sa.Column("environment_id", Str, nullable=False),
    sa.Column("status", Str, nullable=False),
    sa.Column("release_id", Str, nullable=False, server_default=""),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("body", Str, nullable=False),
    sa.Index("promotions_by_release", "release_id"),
    sa.Index("promotions_by_env", "environment_id", "created_at"),
)


webops_deployments = sa.Table(
    "webops_deployments",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", Str, nullable=False),
    sa.Column("name", Str, nullable=False),
    sa.Column("repo_url", Str, nullable=False),
    sa.Column("branch", Str, nullable=False),
    sa.Column("project_type", Str, nullable=False, server_default=""),
    sa.Column("domain", Str, nullable=False, server_default=""),
    sa.Column("port", Int, nullable=False, server_default="0"),
    sa.Column("machine_id", Str, nullable=False, server_default=""),
    sa.Column("status", Str, nullable=False),
    sa.Column("env", Str, nullable=False, server_default="{}"),
    sa.Column("build_seq", Int, nullable=False, server_default="0"),
    sa.Column("live_build", Str, nullable=False, server_default=""),
    sa.Column("building", Str, nullable=False, server_default=""),
    sa.Column("unit", Str, nullable=False, server_default=""),
    sa.Column("files", Str, nullable=False, server_default="[]"),
    sa.Column("env_example", Str, nullable=False, server_default="{}"),
    sa.Column("created_by", Str, nullable=False, server_default=""),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("updated_at", Real, nullable=False),
    sa.Index("webops_by_machine", "machine_id"),
    sa.UniqueConstraint("tenant", "name"),
    sqlite_autoincrement=True,
)


webops_logs = sa.Table(
    "webops_logs",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column(
        "deployment_id",
        Int,
        sa.ForeignKey("webops_deployments.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("level", Str, nullable=False),
    sa.Column("message", Str, nullable=False),
    sa.Column("created_at", Real, nullable=False),
    sa.Index("webops_logs_by_deployment", "deployment_id", "id"),
    sqlite_autoincrement=True,
)


webhooks = sa.Table(
    "webhooks",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", Str, nullable=False),
    sa.Column("url", Str, nullable=False),
    sa.Column("events", Str, nullable=False, server_default="[]"),
    sa.Column("secret", Str, nullable=False),
    sa.Column("active", Int, nullable=False, server_default="1"),
    sa.Column("created_by", Str, nullable=False, server_default=""),
    sa.Column("created_at", Real, nullable=False),
    sa.Index("webhooks_by_tenant", "tenant"),
    sqlite_autoincrement=True,
)


webops_bulk_jobs = sa.Table(
    "webops_bulk_jobs",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("tenant", Str, nullable=False),
    sa.Column("action", Str, nullable=False),
    sa.Column("total", Int, nullable=False),
    sa.Column("status", Str, nullable=False),
    sa.Column("results", Str, nullable=False, server_default="[]"),
    sa.Column("runner", Str, nullable=False, server_default=""),
    sa.Column("created_at", Real, nullable=False),
    sa.Column("finished_at", Real, nullable=False, server_default="0"),
    sa.Index("webops_bulk_jobs_by_created", "created_at"),
)


webhook_outbox = sa.Table(
    "webhook_outbox",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("webhook_id", Int, sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("tenant", Str, nullable=False),
    sa.Column("event", Str, nullable=False),
    sa.Column("delivery", Str, nullable=False),
    sa.Column("body", Str, nullable=False),
    sa.Column("attempts", Int, nullable=False, server_default="0"),
    sa.Column("next_at", Real, nullable=False),
    sa.Column("created_at", Real, nullable=False),
    sa.Index("webhook_outbox_by_due", "next_at"),
    sqlite_autoincrement=True,
)


webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("webhook_id", Int, sa.ForeignKey("webhooks.id", ondelete="CASCADE"), nullable=False),
    sa.Column("delivery", Str, nullable=False),
    sa.Column("event", Str, nullable=False),
    sa.Column("attempt", Int, nullable=False),
    sa.Column("status_code", Int, nullable=False, server_default="0"),
    sa.Column("ok", Int, nullable=False, server_default="0"),
    sa.Column("error", Str, nullable=False, server_default=""),
    sa.Column("duration_ms", Int, nullable=False, server_default="0"),
    sa.Column("at", Real, nullable=False),
    sa.Index("webhook_deliveries_by_hook", "webhook_id", "id"),
    sqlite_autoincrement=True,
)


webops_databases = sa.Table(
    "webops_databases",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("tenant", Str, nullable=False),
    sa.Column("name", Str, nullable=False),
    sa.Column("pg_name", Str, nullable=False),
    sa.Column("password", Str, nullable=False),
    sa.Column("host", Str, nullable=False),
    sa.Column("port", Int, nullable=False),
    sa.Column("deployment_id", Int, nullable=False, server_default="0"),
    sa.Column("created_by", Str, nullable=False, server_default=""),
    sa.Column("created_at", Real, nullable=False),
    sa.UniqueConstraint("tenant", "name"),
    sa.UniqueConstraint("pg_name"),
    sqlite_autoincrement=True,
)


webops_db_backups = sa.Table(
    "webops_db_backups",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("database_id", Int, nullable=False),
    sa.Column("path", Str, nullable=False),
    sa.Column("size", Int, nullable=False),
    sa.Column("sha256", Str, nullable=False),
    sa.Column("created_at", Real, nullable=False),
    sa.Index("webops_db_backups_by_db", "database_id", "id"),
    sqlite_autoincrement=True,
)


def _sample_table(name: str) -> sa.Table:
    """A machine load series (#21): one row per machine and `minute` (Unix time // 60)."""
    return sa.Table(
        name,
        metadata,
        sa.Column("machine_id", Str, primary_key=True),
        sa.Column("minute", Int, primary_key=True),
        sa.Column("tenant", Str, nullable=False),
        sa.Column("cpu_percent", Real, nullable=False),
        sa.Column("load1", Real, nullable=False),
        sa.Column("memory_total", Int, nullable=False),
        sa.Column("memory_used", Int, nullable=False),
        sa.Column("disk_total", Int, nullable=False),
        sa.Column("disk_used", Int, nullable=False),
        sa.Column("uptime_s", Real, nullable=False),
        sa.Index(f"{name}_by_tenant", "tenant", "minute"),
        sqlite_with_rowid=False,
    )


machine_samples = _sample_table("machine_samples")
"""The last report of each minute."""
machine_samples_hourly = _sample_table("machine_samples_hourly")
"""The per-minute series averaged by hour (`minute`: the hour's first), kept longer."""


coordinators = sa.Table(
    "coordinators",
    metadata,
    sa.Column("id", Str, primary_key=True),
    sa.Column("api_url", Str, nullable=False, server_default=""),
    sa.Column("hub_url", Str, nullable=False, server_default=""),
    sa.Column("started_at", Real, nullable=False),
    sa.Column("heartbeat_at", Real, nullable=False),
)
"""Every coordinator sharing the database; `heartbeat_at` is the database's clock."""


leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", Str, primary_key=True),
    sa.Column("holder", Str, nullable=False),
    sa.Column("epoch", Int, nullable=False),
    sa.Column("expires_at", Real, nullable=False),
)
"""Singleton work's leases: `epoch` (the fencing token) grows with every new tenure;
`expires_at` is the database's clock."""
