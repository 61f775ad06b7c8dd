"""The environment domain's records (plain values; stored by `EnvironmentStore`)."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from coordinator.models import DEFAULT_TENANT

TargetType = Literal["docker_host", "compose_host", "ecs_service", "nomad_job"]
TARGET_TYPES: tuple[str, ...] = ("docker_host", "compose_host", "ecs_service", "nomad_job")
AGENT_DRIVEN: frozenset[str] = frozenset({"docker_host", "compose_host"})
"""Target types whose machine's Moorage agent runs the release; the others are stored
as given and refused on deploy and health-check."""
HealthStatus = Literal["unknown", "healthy", "unhealthy", "unreachable"]
HEALTH_STATUSES: tuple[str, ...] = ("unknown", "healthy", "unhealthy", "unreachable")
PromotionStatus = Literal["pending_approval", "deploying", "completed", "failed", "rejected"]
POLICIES: tuple[str, ...] = ("default", "ordered", "any")
"""`default`/`ordered`: a release enters an environment only after it succeeded in the
one below (by orderIndex); `any`: no order."""


class Environment(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    display_name: str = ""
    order_index: int = 0
    config: dict[str, Any] = {}
    required_approvals: int = 0
    require_sod: bool = False
    promotion_policy: str = "default"
    auto_promote_from: str = ""
    """An environment id (or name): a success there promotes here automatically."""
    is_production: bool | None = None
    """Explicit flag; None: the tenant's highest orderIndex is production."""
    group_id: str = ""
    """The deploy domain's machine group holding this environment's target machines."""
    created_at: float = 0.0
    updated_at: float = 0.0
    tenant: str = DEFAULT_TENANT


class FreezeWindow(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    environment_id: str
    start: float
    end: float
    reason: str = ""
    exceptions: list[str] = []
    created_by: str = ""
    created_at: float = 0.0
    tenant: str = DEFAULT_TENANT


class TargetGroup(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    environment_id: str
    name: str
    description: str = ""
    labels: dict[str, str] = {}
    created_at: float = 0.0
    updated_at: float = 0.0
    tenant: str = DEFAULT_TENANT


class Target(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    environment_id: str
    name: str
    target_type: str
    target_group_id: str = ""
    connection: dict[str, Any] = {}
    labels: dict[str, str] = {}
    deployment_directory: str = ""
    machine_id: str = ""
    """The enrolled machine it is bound to ("" until one matches connection.host)."""
    explicit_machine: bool = False
    health_status: str = "unknown"
    health_message: str = ""
    last_health_check: float = 0.0
    created_at: float = 0.0
    updated_at: float = 0.0
    tenant: str = DEFAULT_TENANT


class Approval(msgspec.Struct, frozen=True, kw_only=True):
    by: str
    """The approver's actor id (`user:7`, or a principal label)."""
    name: str = ""
    at: float = 0.0
    comment: str = ""


class Promotion(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    environment_id: str
    application_id: str
    version: str
    source_release_id: str = ""
    """The deploy-domain release whose units are promoted ("" when cut fresh)."""
    requested_by: str = ""
    requested_by_name: str = ""
    built_by: str = ""
    """Who cut the source release (the requester of the promotion that made it)."""
    required_approvals: int = 0
    require_sod: bool = False
    approvals: list[Approval] = []
    status: PromotionStatus = "pending_approval"
    release_id: str = ""
    """The release the rollout into this environment cut (the deploy domain's)."""
    deployment_id: str = ""
    message: str = ""
    comment: str = ""
    auto: bool = False
    freeze_exception: str = ""
    """The freeze window whose exception let it through, if one did."""
    created_at: float = 0.0
    updated_at: float = 0.0
    tenant: str = DEFAULT_TENANT
