"""What the WebOps store keeps."""

from __future__ import annotations

import msgspec


class WebDeployment(msgspec.Struct, kw_only=True):
    id: int = 0
    tenant: str
    name: str
    repo_url: str
    branch: str = "main"
    project_type: str = ""
    """Asked for, else detected by the last build ("" until then)."""
    domain: str = ""
    port: int = 0
    machine_id: str = ""
    status: str = "pending"
    env: dict[str, str] = {}
    build_seq: int = 0
    """Number of the last build started (build ids are `b<seq>`)."""
    live_build: str = ""
    """The build the unit runs ("" before the first good build)."""
    building: str = ""
    """The build in progress ("" none)."""
    unit: str = ""
    files: list[str] = []
    env_example: dict[str, str] = {}
    created_by: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


class WebLogItem(msgspec.Struct, frozen=True):
    id: int
    level: str
    message: str
    created_at: float


class WebQuery(msgspec.Struct, frozen=True, kw_only=True):
    status: str = ""
    project_type: str = ""
    search: str = ""
    offset: int = 0
    limit: int = 20


class Webhook(msgspec.Struct, kw_only=True):
    """A receiver of domain events (#21), in one tenant. The secret signs deliveries
    (HMAC needs it in the clear: it lives in the 0600 database, never in a response
    after create, never in a log)."""

    id: int = 0
    tenant: str
    url: str
    events: list[str] = []
    """Webhook event names (`deployment.completed`...) or prefixes ending in `.`;
    empty: every event."""
    secret: str = ""
    active: bool = True
    created_by: str = ""
    created_at: float = 0.0


class OutboxItem(msgspec.Struct, frozen=True, kw_only=True):
    """An event waiting to be delivered to one webhook (stored: a crash or a lost lease
    loses none; the coordinator holding the lease delivers, #23)."""

    id: int = 0
    webhook_id: int
    tenant: str
    event: str
    delivery: str
    body: str
    """The signed payload (JSON), exactly as every attempt sends it."""
    attempts: int = 0
    """Attempts made so far."""
    next_at: float
    created_at: float = 0.0


class WebhookDelivery(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt at delivering one event to one webhook."""

    id: int = 0
    webhook_id: int
    delivery: str
    """The delivery's id (`X-Moorage-Delivery`), the same over its attempts."""
    event: str
    attempt: int
    status_code: int = 0
    """0: no HTTP answer (refused, timed out)."""
    ok: bool = False
    error: str = ""
    duration_ms: int = 0
    at: float = 0.0


class Database(msgspec.Struct, kw_only=True):
    """A PostgreSQL database and its owner role (same name, `pg_name`) on the
    configured server (#21)."""

    id: int = 0
    tenant: str
    name: str
    pg_name: str
    password: str
    host: str
    port: int
    deployment_id: int = 0
    """The linked deployment (its DATABASE_URL points here); 0: none."""
    created_by: str = ""
    created_at: float = 0.0


class DatabaseBackup(msgspec.Struct, frozen=True, kw_only=True):
    id: int = 0
    database_id: int
    path: str
    size: int
    sha256: str
    created_at: float


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """A machine's load in one minute (the last report of that minute) (#21)."""

    machine_id: str
    minute: int
    """Unix time // 60."""
    tenant: str = "default"
    cpu_percent: float = 0.0
    load1: float = 0.0
    memory_total: int = 0
    memory_used: int = 0
    disk_total: int = 0
    disk_used: int = 0
    uptime_s: float = 0.0


class ErrorItem(msgspec.Struct, frozen=True):
    id: int
    deployment: str
    level: str
    message: str
    created_at: float


class BulkResult(msgspec.Struct, frozen=True):
    id: int
    success: bool
    name: str = ""
    status: str = ""
    """The deployment's status after the action ("" when it failed or was deleted)."""
    error: str = ""
    code: int = 200
    """The HTTP status the action alone would have had."""


class BulkJob(msgspec.Struct, kw_only=True):
    id: str
    tenant: str
    action: str
    total: int
    status: str = "running"
    """running, completed, or interrupted (the coordinator running it stopped)."""
    results: list[BulkResult] = []
    runner: str = ""
    """The coordinator running it."""
    created_at: float = 0.0
    finished_at: float = 0.0
