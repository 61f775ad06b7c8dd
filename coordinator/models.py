"""Domain records shared by storage, the hub and every API adapter."""

from __future__ import annotations

import re
from typing import Literal

import msgspec

from proto.messages import DesiredState, DriftEntry, Sticker
from proto.units import UnitOption

MachineState = Literal["connected", "disconnected", "lost"]

DEFAULT_TENANT = "default"
"""Where every object made before tenants existed lives, and where fleet's clients act."""
TENANT_PATTERN = r"^([a-z0-9][a-z0-9._-]{0,62})?$"
"""A tenant name (or nothing: the caller's own), as request bodies declare it."""
_TENANT_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def tenant_problem(name: str) -> str:
    """What is wrong with a tenant name ("" if nothing): 1-63 lowercase letters, digits,
    '.', '_' or '-', starting with a letter or digit. Pure."""
    if _TENANT_NAME.fullmatch(name):
        return ""
    return (
        f"tenant {name[:80]!r} is invalid: use 1-63 lowercase letters, digits, '.', '_' or"
        " '-', starting with a letter or digit"
    )


class Machine(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    hostname: str = ""
    primary_ip: str = ""
    metadata: dict[str, str] = {}
    capabilities: list[str] = []
    state: MachineState = "disconnected"
    state_since: float = 0.0
    last_seen: float = 0.0
    enrolled_at: float = 0.0
    cert_serial: str = ""
    cert_not_after: float = 0.0
    revoked: bool = False
    agent_version: str = ""
    desired_revision: int = 0
    applied_revision: int = 0
    tenant: str = DEFAULT_TENANT
    """The tenant of the join token it enrolled with; it runs only that tenant's units."""


class JoinToken(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    created_at: float
    expires_at: float
    used_at: float | None = None
    used_by: str = ""
    description: str = ""
    machine_id: str = ""
    """Bound: only this machine may enrol with it (re-enrolment of an enrolled one)."""
    tenant: str = DEFAULT_TENANT
    """A machine enrolled with this token belongs to this tenant."""


class ApiToken(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    role: str
    created_at: float
    expires_at: float | None = None
    revoked: bool = False
    tenant: str = DEFAULT_TENANT
    unlimited: bool = False
    """Exempt from the per-token general rate limit (admin-set)."""


class User(msgspec.Struct, frozen=True, kw_only=True):
    """A person (or robot) who logs in with a password. The password's argon2id hash
    is never part of this record: only the store and the user service see it."""

    id: int
    username: str
    email: str = ""
    is_staff: bool = False
    """Staff hold `admin` (every permission) whatever their granted permissions."""
    disabled: bool = False
    permissions: list[str] = []
    """Granted, in the canonical order (coordinator.trust.permissions.PERMISSIONS)."""
    tenants: list[str] = []
    """The first is the default tenant of the user's tokens."""
    created_at: float = 0.0


class UserToken(msgspec.Struct, frozen=True, kw_only=True):
    """A token a user got by logging in: acts as that user, in one tenant, with a
    subset of the user's permissions, until it expires or is revoked."""

    id: str
    user_id: int
    name: str = ""
    tenant: str = "default"
    permissions: list[str] = []
    created_at: float = 0.0
    expires_at: float = 0.0
    revoked: bool = False


class Unit(msgspec.Struct, frozen=True, kw_only=True):
    """A unit as the operator defined it, and the machines it is placed on."""

    name: str
    options: list[UnitOption]
    hash: str
    desired_state: DesiredState = "inactive"
    pinned: bool = False
    """Placed explicitly by an operator call: the scheduler leaves its placement alone."""
    machines: list[str] = []
    created_at: float = 0.0
    updated_at: float = 0.0
    unschedulable: str = ""
    """Why the scheduler placed it on no machine (the last pass's word; not stored)."""


class UnitHead(msgspec.Struct, frozen=True, kw_only=True):
    """A unit without its options: what a scheduling pass reads of every unit."""

    name: str
    hash: str
    desired_state: DesiredState
    pinned: bool
    machines: list[str]
    tenant: str = DEFAULT_TENANT


class UnitState(msgspec.Struct, frozen=True, kw_only=True):
    """What one machine last reported about one unit."""

    name: str
    machine_id: str
    hash: str = ""
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    main_pid: int = 0
    image_digest: str = ""
    message: str = ""
    target_state: str = ""
    updated_at: float = 0.0


class UnitCopy(UnitState, frozen=True, kw_only=True):
    """A reported state as the APIs show it: `stale` when its machine is not connected
    (the copy may still run there, or may have stopped unseen), `age_s` how long ago
    that machine last reported (0 for live machines)."""

    stale: bool = False
    age_s: float = 0.0


# --- applications, groups, deployments, releases (the Fleet Manager vocabulary) ---------

DeploymentStatus = Literal["Created", "Running", "Success", "Failed"]
JobStatus = Literal["Created", "Running", "Success", "Failed"]


class MachineGroup(msgspec.Struct, frozen=True, kw_only=True):
    """Machines chosen by metadata (`selector`, every pair must match) and/or by id.
    The built-in `default` group (empty selector, no ids) holds every machine."""

    id: str
    name: str
    description: str = ""
    selector: dict[str, str] = {}
    machines: list[str] = []
    builtin: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    tenant: str = DEFAULT_TENANT


class Application(msgspec.Struct, frozen=True, kw_only=True):
    """An application and its latest version; every version is kept, immutable."""

    id: str
    name: str
    description: str = ""
    source_type: str = ""
    version: str = ""
    """The latest version's label."""
    version_number: int = 0
    source_config: str = ""
    """The latest version's manifest, byte for byte."""
    digest: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    tenant: str = DEFAULT_TENANT


class ApplicationVersion(msgspec.Struct, frozen=True, kw_only=True):
    application_id: str
    number: int
    label: str
    source_config: str
    digest: str
    created_at: float = 0.0


class Deployment(msgspec.Struct, frozen=True, kw_only=True):
    """An application rolled out to a machine group; at most one rollout at a time."""

    id: str
    name: str
    application_id: str
    group_id: str
    application_version: str = ""
    """The version label to deploy; empty: the application's latest at deploy time."""
    status: DeploymentStatus = "Created"
    current_release: str = ""
    """The last release that finished with Success (what new group members get)."""
    created_at: float = 0.0
    updated_at: float = 0.0
    tenant: str = DEFAULT_TENANT


class ReleaseUnit(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    options: list[UnitOption]
    hash: str
    sha256: str
    image: str = ""
    """The manifest's `Image=` as written (container units)."""
    image_digest: str = ""
    """What it was pinned to when the release was cut (`sha256:...`)."""


class Release(msgspec.Struct, frozen=True, kw_only=True):
    """An immutable cut of one application version for one deployment, and the state
    of its rollout (the only mutable part: status, batch, message)."""

    id: str
    deployment_id: str
    seq: int
    application_id: str
    version: str
    version_number: int
    units: list[ReleaseUnit]
    batch_size: int = 1
    min_healthy_s: float = 5.0
    timeout_s: float = 300.0
    rollback_on_failure: bool = False
    drift_policy: str = "report"
    previous_release: str = ""
    status: DeploymentStatus = "Created"
    batch: int = 0
    """Index of the batch being rolled out (or the last one, once finished)."""
    batches: int = 0
    message: str = ""
    rolled_back: bool = False
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float = 0.0


class ReleaseJob(msgspec.Struct, frozen=True, kw_only=True):
    """One machine's part of a release."""

    id: str
    release_id: str
    machine_id: str
    batch: int
    status: JobStatus = "Created"
    message: str = ""
    started_at: float = 0.0
    healthy_since: float = 0.0
    finished_at: float = 0.0


class MachineSticker(msgspec.Struct, frozen=True, kw_only=True):
    """A sticker as the machine's agent last reported it."""

    machine_id: str
    sticker: Sticker
    reported_at: float = 0.0


class MachineDrift(msgspec.Struct, frozen=True, kw_only=True):
    """A machine's last drift report (empty entries: no drift)."""

    machine_id: str
    entries: list[DriftEntry]
    checked_at: float = 0.0
    reported_at: float = 0.0


AuditKind = Literal["request", "event"]


class AuditEntry(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One line of the audit log: a write request (who, in which tenant, what, on
    what, with which outcome, from where) or a domain event (kind, subject, actor)."""

    id: int = 0
    """Assigned by the store; increasing (the paging cursor)."""
    at: float
    kind: AuditKind = "request"
    principal_kind: str = ""
    """"certificate", "token", "user"; "" when the request was not authenticated."""
    principal: str = ""
    tenant: str = ""
    method: str = ""
    route: str = ""
    """The route's declared template (`/api/v2/deployments/{id}/deploy`)."""
    path: str = ""
    target: dict[str, str] = {}
    """The path parameters."""
    status: int = 0
    client_ip: str = ""
    event: str = ""
    """A domain event's kind (`deployment.started`)."""
    subject: str = ""
    actor: str = ""
    data: dict[str, str] = {}


class AuditQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters of the audit log (all optional), newest first, `before` the cursor id."""

    principal: str = ""
    """A principal's name, or `kind:name`."""
    tenant: str = ""
    kind: str = ""
    method: str = ""
    path_prefix: str = ""
    route: str = ""
    status: int = 0
    event: str = ""
    """An event kind, or a prefix ending in '.'."""
    since: float = 0.0
    until: float = 0.0
    before: int = 0
    """Only entries with a smaller id (the cursor of the previous page)."""
    limit: int = 100
