"""The store's ports: what the domain services need from persistence, one Protocol per
aggregate, and the errors every engine raises.

Services are typed against these, never against an engine; `coordinator.app.open_store`
is the only place that opens one (`coordinator.store.sql.SqlStore`, on SQLAlchemy
Core: an SQLite file by default, PostgreSQL for several coordinators).

The ports are synchronous: see docs/architecture.md ("The store is synchronous") for
why, and for which calls run off the event loop.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from coordinator.errors import Conflict as Conflict
from coordinator.errors import NotFound as NotFound
from coordinator.models import DEFAULT_TENANT as DEFAULT_TENANT

if TYPE_CHECKING:
    from coordinator.envs.model import Environment, FreezeWindow, Promotion, Target, TargetGroup
    from coordinator.models import (
        ApiToken,
        Application,
        ApplicationVersion,
        AuditEntry,
        AuditQuery,
        Deployment,
        DeploymentStatus,
        JoinToken,
        Machine,
        MachineDrift,
        MachineGroup,
        MachineState,
        MachineSticker,
        Release,
        ReleaseJob,
        Unit,
        UnitHead,
        UnitState,
        User,
        UserToken,
    )
    from coordinator.store.fence import CoordinatorInfo, LeaseInfo
    from coordinator.store.health import StorageHealth
    from coordinator.tasks.records import RunEvent, RunQuery, TaskDefinition, TaskRun
    from coordinator.webops.records import (
        BulkJob,
        Database,
        DatabaseBackup,
        ErrorItem,
        OutboxItem,
        Sample,
        WebDeployment,
        Webhook,
        WebhookDelivery,
        WebLogItem,
        WebQuery,
    )
    from proto.messages import DriftEntry, Sticker, UnitStatus
    from proto.units import UnitOption

DEFAULT_GROUP_ID = "c9a3f5e2-5d0b-5c1e-9a57-0f2f3c1d0e01"
"""The built-in group every store creates with its schema (every machine of the fleet)."""
DEFAULT_GROUP = "default"


def builtin_group_id(tenant: str) -> str:
    """The id of a tenant's built-in `default` group (every machine of the tenant): the
    schema's for `default`, a name-based UUID for any other tenant (the same on every
    coordinator, so it needs no lookup). Pure."""
    if tenant == DEFAULT_TENANT:
        return DEFAULT_GROUP_ID
    return str(uuid.uuid5(uuid.UUID(DEFAULT_GROUP_ID), "tenant:" + tenant))


FAULT_MESSAGES = {
    "full": "coordinator storage is full",
    "io": "coordinator storage is failing",
    "unreachable": "the coordinator's database cannot be reached",
    "busy": "the coordinator's database is busy",
}


class StorageError(Exception):
    """The store cannot do what was asked; the message says why."""


class EnrollRefused(StorageError):
    """The join token cannot be used; the message says why (shown to the agent)."""

    status = 403


class EnrollConflict(EnrollRefused):
    """The machine id is enrolled already and the token may not take it over."""

    status = 409


class StorageUnavailable(StorageError):
    """A call failed for the storage's sake, not the request's: full or failing (`kind`
    "full", "io"), a database that cannot be reached ("unreachable") or one too busy to
    take the call in time ("busy", see `core._write_lock`); answered 507 (full) or 503
    naming it, and retried by what writes behind."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{FAULT_MESSAGES.get(kind, 'coordinator storage failed')} ({detail})")


@runtime_checkable
class StoreAdmin(Protocol):
    """The store as a whole: its health, grouping writes, closing."""

    health: StorageHealth

    @property
    def schema_version(self) -> str:
        """The schema revision the database is at (Alembic's)."""
        ...

    def batch(self) -> AbstractContextManager[object]:
        """Group many writes into one transaction (one fsync); nested writes join it."""
        ...

    def probe(self) -> bool:
        """Whether the store takes a small write again (after a fault)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class MachineStore(Protocol):
    """Machines and their agent sessions: what agents publish, liveness state,
    certificates and revocation."""

    def get_machine(self, machine_id: str) -> Machine | None: ...

    def desired_revisions(self, machine_ids: Iterable[str]) -> dict[str, int]:
        """The stored desired revision of each machine that exists and is not revoked
        (one query): what a wave of new sessions and the hub's safety net compare with
        what their agents hold or were last sent."""

    def list_machines(
        self, *, include_revoked: bool = False, tenant: str | None = None
    ) -> list[Machine]:
        """Machines by id: one tenant's (None: every tenant's)."""
        ...

    def record_hello(
        self,
        machine_id: str,
        *,
        hostname: str,
        primary_ip: str,
        metadata: dict[str, str],
        capabilities: Sequence[str],
        agent_version: str,
        now: float,
        session_owner: str = "",
    ) -> None:
        """The machine is connected; with `session_owner`, to that coordinator (one
        write for both: a reconnect wave makes thousands)."""
        ...

    def patch_metadata(self, machine_id: str, patch: dict[str, str | None]) -> bool:
        """Operator overrides over what the agent publishes; None removes a key."""
        ...

    def set_capabilities(self, machine_id: str, capabilities: list[str]) -> None: ...

    def set_machine_state(
        self, machine_id: str, state: MachineState, now: float, *, last_seen: float | None = None
    ) -> None: ...

    def disconnect_all(self, now: float) -> int:
        """After a restart no session survives: every connected machine is disconnected now."""
        ...

    def set_machine_cert(self, machine_id: str, serial: str, not_after: float, now: float) -> None:
        """Record a renewed certificate; earlier ones stay valid until expiry or revocation."""
        ...

    def revoke_machine(self, machine_id: str, now: float) -> bool:
        """Mark the machine revoked and refuse every certificate it was issued so far."""
        ...

    def is_serial_revoked(self, serial: str) -> bool: ...


@runtime_checkable
class UnitStore(Protocol):
    """Units, their placements, what machines report about them, and per-machine applied revisions.

    Every write that changes what a machine must run bumps that machine's desired
    revision in the same transaction and returns the machines affected."""

    def get_unit(self, name: str, *, tenant: str = DEFAULT_TENANT) -> Unit | None: ...

    def list_units(self, *, machine_id: str | None = None, tenant: str | None = None) -> list[Unit]:
        """Units ordered by name (fleet's order): one tenant's (None: every tenant's),
        optionally only those placed on a machine (a machine holds only its tenant's)."""
        ...

    def unit_heads(self, *, tenant: str | None = None) -> list[UnitHead]:
        """Every unit (of one tenant, or of all) with its placements but without decoding
        its options (a scheduling pass over 100,000 units needs the options only of
        units it has not seen)."""
        ...

    def unit_options(
        self, names: Sequence[str], *, tenant: str = DEFAULT_TENANT
    ) -> dict[str, list[UnitOption]]: ...

    def unit_page(
        self, offset: int, limit: int, *, tenant: str = DEFAULT_TENANT
    ) -> tuple[list[Unit], int]:
        """`tenant`'s units `offset` to `offset + limit` in name order, and how many there
        are (a page of fleet's list reads one page, not every unit)."""
        ...

    def put_units(self, units: list[Unit], now: float, *, tenant: str = DEFAULT_TENANT) -> set[str]:
        """Many units in one transaction (one fsync); returns the affected machines."""
        ...

    def put_unit(self, unit: Unit, now: float, *, tenant: str = DEFAULT_TENANT) -> set[str]:
        """Create or replace a unit with its placements; returns the machines whose
        desired state changed (their revisions are bumped in the same transaction).

        What machines reported stays when a unit moves or goes: a copy runs until its
        machine says it stopped (a partitioned machine cannot), so its row goes only
        when that machine reports the unit gone (`record_unit_states`)."""
        ...

    def set_placements(
        self, changes: dict[str, list[str]], *, tenant: str = DEFAULT_TENANT
    ) -> set[str]:
        """Store many units' new placements in one transaction (the scheduler's output);
        returns every machine whose desired state changed, revisions bumped."""
        ...

    def delete_unit(self, name: str, *, tenant: str = DEFAULT_TENANT) -> set[str] | None:
        """Remove a unit; None if it did not exist, else the machines it was placed on."""
        ...

    def set_applied_revision(self, machine_id: str, revision: int) -> None: ...

    def record_unit_states(
        self,
        machine_id: str,
        changes: list[UnitStatus],
        removed: list[str],
        now: float,
        *,
        replace_all: bool = False,
    ) -> None:
        """Store what a machine reported; `replace_all` for a Hello's full snapshot."""
        ...

    def unit_states(
        self,
        *,
        machine_id: str | None = None,
        name: str | None = None,
        tenant: str | None = None,
    ) -> list[UnitState]:
        """Reported states ordered by (name, machine) - fleet's order for /state; with
        `tenant`, only what that tenant's machines reported."""
        ...


@runtime_checkable
class TokenStore(Protocol):
    """Join tokens, enrolment (a token consumed and the machine recorded at once) and API tokens."""

    def create_join_token(
        self,
        token_id: str,
        secret_hash: str,
        *,
        now: float,
        ttl_s: float,
        description: str = "",
        machine_id: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> JoinToken: ...

    def create_join_tokens(
        self,
        tokens: list[tuple[str, str]],
        *,
        now: float,
        ttl_s: float,
        description: str = "",
        machine_id: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> None:
        """(id, secret hash) pairs, all in one transaction; `machine_id` binds them; a
        machine enrolled with one of them belongs to `tenant`."""
        ...

    def join_token_hash(self, token_id: str, now: float) -> str:
        """The stored hash of a usable token, or EnrollRefused saying why it is unusable."""
        ...

    def enroll(
        self, token_id: str, machine_id: str, *, serial: str, not_after: float, now: float
    ) -> bool:
        """Consume the token and record the machine in one transaction: a token enrols
        once, and never takes over an enrolled machine it is not bound to
        (`tokens.enrolment_refusal`). True when an enrolled machine was re-enrolled:
        its earlier certificates are revoked in the same transaction."""
        ...

    def join_token_binding(self, token_id: str) -> str:
        """The machine id a join token is bound to ("" for an ordinary token)."""
        ...

    def list_join_tokens(self, *, tenant: str | None = None) -> list[JoinToken]: ...

    def create_api_token(
        self,
        token_id: str,
        secret_hash: str,
        *,
        name: str,
        role: str,
        now: float,
        ttl_s: float | None,
        tenant: str = DEFAULT_TENANT,
        unlimited: bool = False,
    ) -> ApiToken: ...

    def api_token(self, token_id: str) -> tuple[ApiToken, str] | None: ...

    def list_api_tokens(self, *, tenant: str | None = None) -> list[ApiToken]: ...

    def revoke_api_token(self, token_id: str, *, tenant: str | None = None) -> bool:
        """Revoke a token (of `tenant` only, when given: another tenant's is not found)."""
        ...


@runtime_checkable
class UserStore(Protocol):
    """Users (with their argon2id hash, which only this port and the user service see),
    the tenants they belong to, and the tokens they got by logging in."""

    def create_user(
        self,
        username: str,
        *,
        email: str,
        password_hash: str,
        is_staff: bool,
        permissions: Sequence[str],
        tenants: Sequence[str],
        now: float,
    ) -> User:
        """Conflict if the username is taken; the tenants are created if missing."""
        ...

    def get_user(self, user_id: int) -> User | None: ...

    def user_by_name(self, username: str) -> tuple[User, str] | None:
        """The user and their password hash."""
        ...

    def list_users(self, *, offset: int = 0, limit: int = 100) -> tuple[list[User], int]:
        """One page by id, and the total count."""
        ...

    def count_users(self) -> int: ...

    def set_user_permissions(self, user_id: int, permissions: Sequence[str]) -> bool: ...

    def set_password_hash(self, user_id: int, password_hash: str) -> bool: ...

    def set_user_disabled(self, user_id: int, disabled: bool) -> bool: ...

    def tenants(self) -> list[str]: ...

    def create_user_token(
        self,
        token_id: str,
        secret_hash: str,
        *,
        user_id: int,
        name: str,
        tenant: str,
        permissions: Sequence[str],
        now: float,
        expires_at: float,
    ) -> UserToken: ...

    def user_token(self, token_id: str) -> tuple[UserToken, str] | None:
        """The token and its secret's hash."""
        ...

    def revoke_user_token(self, token_id: str) -> bool: ...

    def set_api_token_unlimited(
        self, token_id: str, unlimited: bool, *, tenant: str | None = None
    ) -> bool:
        """Exempt a token (of `tenant` only, when given) from the general rate limit, or
        not; False if unknown."""
        ...


@runtime_checkable
class DeploymentStore(Protocol):
    """Machine groups, applications and versions, deployments, releases, jobs, and which
    release each machine runs. A name taken by another record of the same tenant
    raises `Conflict`. Lookups by id and lists take `tenant` (None: any tenant, for the
    rollout loop); lookups by name are within one tenant; a record is written in its
    own `tenant`."""

    def list_groups(self, *, tenant: str | None = None) -> list[MachineGroup]: ...

    def get_group(self, group_id: str, *, tenant: str | None = None) -> MachineGroup | None: ...

    def group_by_name(self, name: str, *, tenant: str = DEFAULT_TENANT) -> MachineGroup | None: ...

    def ensure_builtin_group(self, tenant: str, now: float) -> None:
        """The tenant's built-in `default` group (`builtin_group_id`), made once."""
        ...

    def put_group(self, group: MachineGroup) -> None:
        """Create or replace (by id, in its tenant); a name used by another group of the
        tenant is a Conflict."""
        ...

    def delete_group(self, group_id: str) -> bool: ...

    def list_applications(self, *, tenant: str | None = None) -> list[Application]: ...

    def get_application(self, app_id: str, *, tenant: str | None = None) -> Application | None: ...

    def application_by_name(
        self, name: str, *, tenant: str = DEFAULT_TENANT
    ) -> Application | None: ...

    def put_application(self, app: Application, new_version: ApplicationVersion | None) -> None:
        """Create or update an application (by id), adding `new_version` if given."""
        ...

    def delete_application(self, app_id: str) -> bool: ...

    def versions(self, app_id: str) -> list[ApplicationVersion]: ...

    def version(self, app_id: str, label: str) -> ApplicationVersion | None: ...

    def list_deployments(self, *, tenant: str | None = None) -> list[Deployment]: ...

    def get_deployment(
        self, deployment_id: str, *, tenant: str | None = None
    ) -> Deployment | None: ...

    def deployment_by_name(
        self, name: str, *, tenant: str = DEFAULT_TENANT
    ) -> Deployment | None: ...

    def deployments_using(
        self,
        *,
        application_id: str | None = None,
        group_id: str | None = None,
        tenant: str | None = None,
    ) -> list[Deployment]: ...

    def put_deployment(self, deployment: Deployment) -> None: ...

    def delete_deployment(self, deployment_id: str) -> set[str] | None:
        """Remove a deployment and what it put on machines; None if it did not exist,
        else the machines whose desired state changed (revisions bumped)."""
        ...

    def set_deployment_status(
        self,
        deployment_id: str,
        status: DeploymentStatus,
        now: float,
        *,
        current_release: str | None = None,
    ) -> None: ...

    def create_release(self, release: Release, jobs: list[ReleaseJob]) -> None:
        """Store a new release with its jobs and mark the deployment Running, at once."""
        ...

    def next_release_seq(self, deployment_id: str) -> int: ...

    def get_release(self, release_id: str, *, tenant: str | None = None) -> Release | None:
        """A release (of a deployment of `tenant` only, when given)."""
        ...

    def list_releases(self, deployment_id: str) -> list[Release]: ...

    def releases_with_status(self, status: DeploymentStatus) -> list[Release]: ...

    def update_release(
        self,
        release_id: str,
        *,
        status: DeploymentStatus,
        batch: int,
        message: str,
        now: float,
        finished: bool = False,
        rolled_back: bool = False,
    ) -> None: ...

    def jobs(self, release_id: str) -> list[ReleaseJob]: ...

    def update_jobs(self, jobs: Iterable[ReleaseJob]) -> None: ...

    def targets(self, deployment_id: str) -> dict[str, str]:
        """machine id -> release id it must run, for one deployment."""
        ...

    def set_targets(self, deployment_id: str, changes: Mapping[str, str | None]) -> set[str]:
        """Point machines at a release (None: the deployment leaves the machine); returns
        the machines whose desired state changed, revisions bumped in the same transaction."""
        ...

    def machine_targets(self, machine_id: str) -> list[tuple[str, str]]:
        """(deployment name, release id) of every deployment on one machine, by name."""
        ...


@runtime_checkable
class ReportStore(Protocol):
    """What machines report about deployments: stickers and drift."""

    def put_stickers(self, machine_id: str, stickers: list[Sticker], now: float) -> None:
        """Replace every sticker of the machine with what its agent reported."""
        ...

    def stickers(
        self, machine_id: str | None = None, *, tenant: str | None = None
    ) -> list[MachineSticker]:
        """Stickers (of one machine, and/or of `tenant`'s machines only)."""
        ...

    def put_drift(
        self, machine_id: str, entries: list[DriftEntry], checked_at: float, now: float
    ) -> None: ...

    def drift(
        self, machine_id: str | None = None, *, tenant: str | None = None
    ) -> list[MachineDrift]: ...


@runtime_checkable
class EnvironmentStore(Protocol):
    """Environments and what hangs off them (#18): freeze windows, target groups,
    targets, promotions. Reads take the tenant; another tenant's objects are None."""

    def put_environment(self, env: Environment) -> None:
        """Insert or replace; Conflict when the tenant already has another of that name."""
        ...

    def get_environment(self, env_id: str, *, tenant: str) -> Environment | None: ...

    def list_environments(self, *, tenant: str) -> list[Environment]:
        """By orderIndex, then name."""
        ...

    def delete_environment(self, env_id: str) -> bool: ...

    def put_freeze_window(self, window: FreezeWindow) -> None: ...

    def freeze_windows(
        self, *, tenant: str | None, environment_id: str | None = None
    ) -> list[FreezeWindow]:
        """By start (tenant None: every tenant's, for the freeze watcher)."""
        ...

    def delete_freeze_window(self, window_id: str) -> bool: ...

    def put_target_group(self, group: TargetGroup) -> None:
        """Conflict when the environment already has another of that name."""
        ...

    def get_target_group(self, group_id: str, *, tenant: str) -> TargetGroup | None: ...

    def target_groups(self, environment_id: str) -> list[TargetGroup]: ...

    def delete_target_group(self, group_id: str) -> bool: ...

    def put_target(self, target: Target) -> None:
        """Conflict when the tenant already has another target of that name."""
        ...

    def get_target(self, target_id: str, *, tenant: str) -> Target | None: ...

    def targets_of(
        self, *, tenant: str | None, environment_id: str | None = None
    ) -> list[Target]: ...

    def delete_target(self, target_id: str) -> bool: ...

    def put_promotion(self, promotion: Promotion) -> None: ...

    def get_promotion(self, promotion_id: str, *, tenant: str | None) -> Promotion | None: ...

    def promotions(
        self,
        *,
        tenant: str | None,
        environment_id: str | None = None,
        status: str | None = None,
        release_id: str | None = None,
    ) -> list[Promotion]:
        """Newest first."""
        ...


@runtime_checkable
class TaskStore(Protocol):
    """Batch tasks (#19): definitions, runs, their events and logs. Every definition
    read is scoped by tenant; runs carry theirs (the service checks it)."""

    def put_definition(self, definition: TaskDefinition) -> None:
        """Insert or replace; Conflict when another live definition of the tenant has
        its alias."""

    def get_definition(self, tenant: str, definition_id: str) -> TaskDefinition | None: ...

    def definition_by_alias(self, tenant: str, alias: str) -> TaskDefinition | None: ...

    def list_definitions(self, tenant: str) -> list[TaskDefinition]: ...

    def delete_definition(self, tenant: str, definition_id: str, now: float) -> bool:
        """Deregister (runs stay readable); False if there was no such definition."""

    def put_runs(self, runs: list[TaskRun], events: list[RunEvent]) -> None:
        """Insert or update runs (not their stored log size) and append events: one
        transaction."""

    def get_run(self, run_id: str) -> TaskRun | None: ...

    def unfinished_runs(self) -> list[TaskRun]:
        """Active runs, and stopped ones whose whole log is not stored yet, in queue order."""

    def max_run_seq(self) -> int: ...

    def list_runs(self, tenant: str, query: RunQuery) -> tuple[int, list[TaskRun]]:
        """(total matching, one page)."""

    def run_events(self, run_id: str) -> list[RunEvent]: ...

    def append_log(self, run_id: str, offset: int, data: bytes) -> int:
        """Store the new bytes of an output chunk; the stored size after it."""

    def read_log(self, run_id: str, start: int, max_bytes: int) -> bytes: ...


@runtime_checkable
class WebOpsStore(Protocol):
    """WebOps deployments (#20) and their log items, scoped by tenant (lookups by id
    take `tenant=None` for the hub's handlers, which work per machine)."""

    def webops_create(self, dep: WebDeployment) -> WebDeployment:
        """Insert (the id assigned); Conflict when the tenant has the name."""

    def webops_update(self, dep: WebDeployment) -> None: ...

    def webops_get(self, tenant: str, name: str) -> WebDeployment | None: ...

    def webops_get_id(self, dep_id: int, tenant: str | None) -> WebDeployment | None: ...

    def webops_on_machine(self, machine_id: str) -> list[WebDeployment]: ...

    def webops_building(self) -> list[WebDeployment]:
        """Every tenant's deployments with a build in progress (few, at any time)."""

    def webops_list(self, tenant: str, query: WebQuery) -> tuple[list[WebDeployment], int]:
        """(one page, newest first; total matching)."""

    def webops_delete(self, dep_id: int) -> None:
        """The deployment and its log items."""

    def webops_log(self, dep_id: int, level: str, message: str, at: float) -> int:
        """Append a log item; its id."""

    def webops_logs(self, dep_id: int, *, after_id: int = 0) -> list[WebLogItem]:
        """Oldest first."""

    def webops_runtime_log(
        self, machine_id: str, name: str, level: str, message: str, at: float
    ) -> None:
        """Append an item to the log of the machine's deployment of that name (if it
        still exists): one statement, for the write-behind of an app's output."""

    def webops_logs_prune(self, machine_id: str, name: str, keep: int) -> int:
        """Keep that deployment's newest `keep` items; how many went."""

    def bulk_job_save(self, job: BulkJob, *, keep: int = 0) -> None:
        """Insert or update a bulk job; with `keep`, only the newest `keep` stay."""

    def bulk_job_get(self, job_id: str, tenant: str) -> BulkJob | None: ...

    def bulk_jobs_interrupt(self, runner: str, now: float) -> int:
        """Jobs `runner` left running are interrupted; how many."""

    def webops_after(self, tenant: str, after_id: int, limit: int) -> list[WebDeployment]:
        """Up to `limit` deployments with ids above `after_id`, oldest first (exports
        walk the table in such pages instead of loading it)."""


@runtime_checkable
class WebhookStore(Protocol):
    """WebOps webhooks (#21) and the log of their delivery attempts."""

    def webhook_create(self, hook: Webhook) -> Webhook:
        """Insert (the id assigned)."""

    def webhooks(self, tenant: str) -> list[Webhook]: ...

    def webhook_get(self, hook_id: int, tenant: str) -> Webhook | None: ...

    def webhook_delete(self, hook_id: int) -> None:
        """The webhook and its delivery log."""

    def webhook_delivered(self, d: WebhookDelivery) -> None:
        """Log one attempt."""

    def webhook_deliveries(self, hook_id: int, limit: int) -> list[WebhookDelivery]:
        """Newest first."""

    def outbox_add(self, items: list[OutboxItem]) -> None:
        """Deliveries to make (one transaction)."""

    def outbox_claim(self, now: float, limit: int, until: float) -> list[OutboxItem]:
        """Those whose next attempt is due, oldest first, each made due again only at
        `until` (one transaction: an attempt in progress is not taken twice)."""

    def outbox_next_at(self) -> float | None:
        """When the earliest waiting delivery is due (None: none waits)."""

    def outbox_done(self, item_id: int) -> None:
        """Delivered, refused for good or out of attempts: gone from the outbox."""

    def outbox_retry(self, item_id: int, attempts: int, next_at: float) -> None: ...

    def outbox_count(self) -> int: ...


@runtime_checkable
class DatabaseStore(Protocol):
    """WebOps PostgreSQL databases (#21) and their backups."""

    def database_create(self, db: Database) -> Database:
        """Insert (the id assigned); Conflict when the tenant has the name."""

    def database_update(self, db: Database) -> None:
        """Its link (`deployment_id`)."""

    def databases(self, tenant: str) -> list[Database]: ...

    def database_get(self, tenant: str, name: str) -> Database | None: ...

    def database_get_id(self, db_id: int, tenant: str) -> Database | None: ...

    def database_delete(self, db_id: int) -> None:
        """The database and its backups' records."""

    def backup_add(self, b: DatabaseBackup) -> DatabaseBackup: ...

    def backups(self, db_id: int) -> list[DatabaseBackup]:
        """Newest first."""


@runtime_checkable
class MonitoringStore(Protocol):
    """Machines' load as a per-minute series, and WebOps error log items (#21)."""

    def sample_put(
        self, sample: Sample, keep_after_minute: int, keep_hours_after_minute: int = 0
    ) -> None:
        """Upsert the machine's sample of that minute and its hour's average; drop its
        minutes before `keep_after_minute`, its hours before `keep_hours_after_minute`."""

    def samples(
        self,
        tenant: str,
        since_minute: int,
        after: tuple[str, int] = ("", -1),
        limit: int = 100000,
        *,
        hourly: bool = False,
    ) -> list[Sample]:
        """Ordered by (machine, minute); `after` resumes past a (machine, minute)."""

    def webops_errors(
        self,
        tenant: str,
        *,
        levels: tuple[str, ...],
        since: float,
        until: float,
        search: str,
        offset: int,
        limit: int,
    ) -> tuple[list[ErrorItem], int]:
        """WebOps log items of those levels, newest first; the total matching."""


@runtime_checkable
class RateLimitStore(Protocol):
    """Rate-limit hits (class, key, time), so limits survive a restart."""

    def add_rate_hits(self, hits: Sequence[tuple[str, str, float]]) -> None:
        """Store hits, in one transaction."""
        ...

    def rate_hits(self, since: float) -> list[tuple[str, str, float]]:
        """Every stored hit after `since`, oldest first."""
        ...

    def prune_rate_hits(self, cutoffs: Mapping[str, float]) -> int:
        """Forget each class's hits at or before its cutoff (and every class not named);
        how many were removed."""
        ...


@runtime_checkable
class AuditStore(Protocol):
    """The audit log: every write request and every domain event, append-only."""

    def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Store entries (their ids are assigned here), in one transaction."""
        ...

    def audit(self, query: AuditQuery) -> list[AuditEntry]:
        """Entries matching the query, newest first, at most `query.limit`."""
        ...


@runtime_checkable
class FleetStore(StoreAdmin, MachineStore, UnitStore, Protocol):
    """Machines and units, and `batch` for a read-then-write as one transaction: what
    the unit service and the fleet APIs need."""


@runtime_checkable
class TrustStore(MachineStore, TokenStore, UserStore, Protocol):
    """Tokens, users, enrolment and certificate revocation: authentication and enrolment."""


@runtime_checkable
class TransactionalDeploymentStore(StoreAdmin, DeploymentStore, Protocol):
    """Deployments plus `batch`: a service's read-then-write as one transaction (so
    it can run in a thread without another request interleaving)."""


@runtime_checkable
class SessionStore(StoreAdmin, MachineStore, Protocol):
    """Machines plus the write-behind's batching and health: the agent hub."""


@runtime_checkable
class ClusterStore(Protocol):
    """Several coordinators on one database (#23): who they are, the leases singleton
    work runs under (atomic, timed by the database's clock), and which coordinator
    holds each machine's hub session."""

    def register_coordinator(
        self, coordinator_id: str, api_url: str, hub_url: str, now: float
    ) -> None: ...

    def heartbeat_coordinator(self, coordinator_id: str) -> bool:
        """False when the row is gone (then register again)."""
        ...

    def live_coordinators(self, stale_after_s: float) -> list[CoordinatorInfo]: ...

    def try_acquire(self, name: str, holder: str, ttl_s: float) -> int | None:
        """A new tenure (its epoch, higher than any before) if the lease is free,
        expired or already `holder`'s; None when another holds it."""
        ...

    def renew(self, name: str, holder: str, epoch: int, ttl_s: float) -> bool:
        """Extend this tenure; False once it expired or another took the lease."""
        ...

    def release(self, name: str, holder: str, epoch: int) -> None: ...

    def lease(self, name: str) -> LeaseInfo | None: ...

    def sessions_elsewhere(self, coordinator_id: str) -> set[str]:
        """Machines stored as connected to a coordinator other than this one."""
        ...

    def session_route(self, machine_id: str, stale_after_s: float) -> tuple[str, str] | None:
        """(coordinator id, hub URL) of the live coordinator holding the machine's
        session, or None when no live coordinator does."""
        ...

    def drop_session(
        self, machine_id: str, coordinator_id: str, now: float, *, last_seen: float
    ) -> bool: ...

    def release_sessions(self, coordinator_id: str, now: float, *, unowned: bool) -> int: ...

    def disconnect_orphans(
        self, now: float, stale_after_s: float, *, alive: str = ""
    ) -> list[str]: ...

    def claim_sessions(
        self, coordinator_id: str, machine_ids: list[str], now: float, *, seen_at: float
    ) -> int: ...

    def unowned_disconnected(self, before: float | None = None) -> list[tuple[str, float]]:
        """Machines disconnected and held by no coordinator, and since when (with
        `before`: only those disconnected since then or earlier)."""

    def mark_lost(self, machine_id: str, now: float, disconnected_since: float) -> bool: ...


if TYPE_CHECKING:
    from collections.abc import AsyncGenerator


@runtime_checkable
class ChangeFeed(Protocol):
    """Which machines' stored state changed on another coordinator sharing the database
    (#23): the hub re-derives what those machines' agents must be sent. Every write
    that bumps a machine's desired revision tells the feed in its own transaction;
    `announce` tells it of other changes after they are committed. On SQLite (one
    coordinator) the feed stays silent."""

    @property
    def shared(self) -> bool:
        """Whether other coordinators may write to this database (PostgreSQL)."""

    def changes(self) -> AsyncGenerator[list[str] | None, None]:
        """Batches of machine ids, as other coordinators commit changes (this one's own
        are included: acting on them again is harmless). None after the feed
        (re)connected: anything may have been missed in between, so check everything."""

    def announce(self, machine_ids: Iterable[str]) -> None:
        """Tell every coordinator that these machines' stored state changed (already
        committed): for changes that do not bump a desired revision."""

    def revoked_serials(self, serials: Iterable[str]) -> set[str]:
        """Which of these certificate serials are revoked (one query, never cached): a
        machine re-enrolled or revoked through another coordinator."""


@runtime_checkable
class Store(
    StoreAdmin,
    MachineStore,
    UnitStore,
    TokenStore,
    UserStore,
    DeploymentStore,
    ReportStore,
    TaskStore,
    WebOpsStore,
    WebhookStore,
    DatabaseStore,
    MonitoringStore,
    RateLimitStore,
    AuditStore,
    EnvironmentStore,
    ClusterStore,
    ChangeFeed,
    Protocol,
):
    """Every port at once: what `open_store` returns and the composition root holds."""
