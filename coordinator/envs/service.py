"""Environments over the deploy domain: the one service behind `/api/v1/environments`,
`/targets`, `/target-groups`, `/promotions` and `moorctl env`.

How an environment maps onto the deploy domain (nothing is duplicated):
- each environment owns a machine group (`env-<name>-<id8>`) whose machines are its
  targets' bound machines (docker_host/compose_host targets only);
- promoting an application version into an environment is a deploy of that version by
  the deployment `<application>-<environment>` bound to that group, cut with the
  units of the promoted release unchanged (images pinned as they were) and rolled out
  by the existing rollout engine (batches, health gates, rollback), with the
  environment's `config.deploymentTimeout` as the health gate's timeout;
- `currentRelease`, stickers and drift come from what the deploy domain and the
  agents report.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

from coordinator.deploy import groups
from coordinator.deploy.deployments import DeploymentService
from coordinator.envs import rules
from coordinator.envs.model import (
    AGENT_DRIVEN,
    HEALTH_STATUSES,
    POLICIES,
    TARGET_TYPES,
    Approval,
    Environment,
    FreezeWindow,
    Promotion,
    Target,
    TargetGroup,
)
from coordinator.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from coordinator.events import ACTOR, Event, EventBus
from coordinator.models import DEFAULT_TENANT, Deployment, Release
from coordinator.reports.service import ReportService, ReportUnavailable
from coordinator.store.ports import EnvironmentStore

log = logging.getLogger(__name__)

WATCH_S = 1.0
"""How often freeze windows are looked at (freeze.started / freeze.ended)."""
TAKEOVER_GRACE_S = 15.0
"""A window that started longer ago than this when a tenure begins was announced by
the watcher before (`rules.announced_before`): the lease's TTL and two watches, with room."""
HEALTH_TIMEOUT_S = 10.0
MAX_APPROVALS = 10


class Unprocessable(DomainError):
    """A valid request the domain cannot carry out for this object (422): a target not
    driven by Moorage agents."""


class Frozen(Conflict):
    """Refused by an active freeze window (409 with the window's reason and end)."""

    def __init__(self, window: FreezeWindow, env: Environment) -> None:
        end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(window.end))
        super().__init__(
            f"environment {env.name!r} is frozen until {end}: {window.reason or 'freeze window'}"
            f" (window {window.id})"
        )
        self.window = window


class Actor(msgspec.Struct, frozen=True):
    """Who acts: `id` (`user:7`, or a principal's label), and every name a freeze
    window's exceptions may list them under (user id, username, label)."""

    id: str
    names: tuple[str, ...] = ()
    display: str = ""

    @property
    def all_names(self) -> set[str]:
        return {self.id, *self.names}


SYSTEM = Actor("system:auto-promote", (), "auto-promote")


class CurrentRelease(msgspec.Struct, frozen=True):
    id: str
    name: str
    deployed_at: float
    deployment: str
    version: str


class EnvironmentService:
    def __init__(
        self,
        store: EnvironmentStore,
        deployments: DeploymentService,
        reports: ReportService,
        events: EventBus,
    ) -> None:
        self.store = store
        self.deployments = deployments
        self.reports = reports
        self.events = events
        self._active: dict[str, FreezeWindow] | None = None
        self._work: set[asyncio.Task[None]] = set()
        events.subscribe(self._on_rollout, ("deployment.completed", "deployment.failed"))
        deployments.deploy_guards.append(self._guard_deploy)
        deployments.hub.on_connected.append(self._on_connected)

    # --- environments ---------------------------------------------------------------------

    def environments(self, *, tenant: str = DEFAULT_TENANT) -> list[Environment]:
        return self.store.list_environments(tenant=tenant)

    def environment(self, env_id: str, *, tenant: str = DEFAULT_TENANT) -> Environment:
        """By id or name, in `tenant` (another tenant's is NotFound)."""
        env = self.store.get_environment(env_id, tenant=tenant) or next(
            (e for e in self.environments(tenant=tenant) if e.name == env_id), None
        )
        if env is None:
            raise NotFound(f"environment {env_id!r} does not exist")
        return env

    def is_production(self, env: Environment) -> bool:
        return rules.is_production(env, self.environments(tenant=env.tenant))

    def create_environment(self, env: Environment) -> Environment:
        """`env` as given (id, group and times are assigned here)."""
        _check_environment(env)
        if any(e.name == env.name for e in self.environments(tenant=env.tenant)):
            raise Conflict(f"an environment named {env.name!r} already exists")
        now = time.time()
        env_id = str(uuid.uuid4())
        group, _ = self.deployments.create_group(
            f"env-{env.name}-{env_id[:8]}"[:128],
            description=f"machines of environment {env.name}",
            tenant=env.tenant,
        )
        created = msgspec.structs.replace(
            env, id=env_id, group_id=group.id, created_at=now, updated_at=now
        )
        try:
            self.store.put_environment(created)
        except Conflict:
            self.deployments.delete_group(group.id, tenant=env.tenant)
            raise
        return created

    def update_environment(
        self, env_id: str, changes: dict[str, Any], *, tenant: str = DEFAULT_TENANT
    ) -> Environment:
        env = self.environment(env_id, tenant=tenant)
        updated = msgspec.structs.replace(env, **changes, updated_at=time.time())
        _check_environment(updated)
        self.store.put_environment(updated)
        return updated

    async def delete_environment(self, env_id: str, *, tenant: str = DEFAULT_TENANT) -> None:
        """409 while it has targets or a promotion rolling out; its deployments (there are
        no machines left to run them) and its machine group go with it."""
        env = self.environment(env_id, tenant=tenant)
        targets = self.store.targets_of(tenant=tenant, environment_id=env.id)
        if targets:
            raise Conflict(
                f"environment {env.name!r} has {len(targets)} target(s); delete them first"
            )
        running = self.store.promotions(tenant=tenant, environment_id=env.id, status="deploying")
        if running:
            raise Conflict(
                f"environment {env.name!r} has a promotion rolling out ({running[0].id})"
            )
        for d in self._deployments_of(env):
            await self.deployments.delete_deployment(d.id, tenant=tenant)
        self.store.delete_environment(env.id)
        with contextlib.suppress(NotFound, Conflict, Invalid):
            self.deployments.delete_group(env.group_id, tenant=tenant)

    def _deployments_of(self, env: Environment) -> list[Deployment]:
        return [
            d for d in self.deployments.deployments(tenant=env.tenant) if d.group_id == env.group_id
        ]

    def current_release(self, env: Environment) -> CurrentRelease | None:
        """The release last rolled out successfully into the environment (the rollout
        engine marks Success only once every unit runs healthy on the machines)."""
        best: CurrentRelease | None = None
        for d in self._deployments_of(env):
            if not d.current_release:
                continue
            release = self.deployments.store.get_release(d.current_release)
            if release is None:
                continue
            at = release.finished_at or release.updated_at
            if best is None or at > best.deployed_at:
                best = CurrentRelease(
                    release.id, self._release_name(release), at, d.name, release.version
                )
        return best

    def _release_name(self, release: Release) -> str:
        app = self.deployments.store.get_application(release.application_id)
        name = app.name if app is not None else release.application_id
        version = release.version
        return f"{name}-{version}" if version[:1] in ("v", "V") else f"{name}-v{version}"

    # --- freeze windows -------------------------------------------------------------------

    def create_freeze_window(
        self, env_id: str, window: FreezeWindow, *, tenant: str = DEFAULT_TENANT
    ) -> FreezeWindow:
        env = self.environment(env_id, tenant=tenant)
        if window.end <= window.start:
            raise Invalid("end: must be after start")
        if len(window.exceptions) > 1000:
            raise Invalid("exceptions: at most 1000")
        created = msgspec.structs.replace(
            window,
            id=str(uuid.uuid4()),
            environment_id=env.id,
            created_at=time.time(),
            tenant=tenant,
        )
        self.store.put_freeze_window(created)
        self.watch(time.time())
        return created

    def windows_of(self, env: Environment) -> list[FreezeWindow]:
        return self.store.freeze_windows(tenant=env.tenant, environment_id=env.id)

    def freeze_windows(
        self, env_id: str, *, active: bool = False, tenant: str = DEFAULT_TENANT
    ) -> list[FreezeWindow]:
        env = self.environment(env_id, tenant=tenant)
        windows = self.store.freeze_windows(tenant=tenant, environment_id=env.id)
        return rules.active_windows(windows, time.time()) if active else windows

    def delete_freeze_window(
        self, env_id: str, window_id: str, *, tenant: str = DEFAULT_TENANT
    ) -> None:
        env = self.environment(env_id, tenant=tenant)
        windows = self.store.freeze_windows(tenant=tenant, environment_id=env.id)
        if not any(w.id == window_id for w in windows):
            raise NotFound(f"freeze window {window_id!r} does not exist")
        self.store.delete_freeze_window(window_id)
        self.watch(time.time())

    def _admit(self, env: Environment, actors: Iterable[Actor], what: str) -> FreezeWindow | None:
        """Frozen (409) if an active window refuses every one of `actors`; the window
        whose exception let one through (audited as freeze.exception_used), or None."""
        names = set().union(*(a.all_names for a in actors))
        windows = self.store.freeze_windows(tenant=env.tenant, environment_id=env.id)
        refusing, excepted = rules.freeze_verdict(windows, time.time(), names)
        if refusing is not None:
            self.events.emit(
                "freeze.refused",
                tenant=env.tenant,
                subject=env.name,
                window=refusing.id,
                reason=refusing.reason,
                what=what,
            )
            raise Frozen(refusing, env)
        if excepted is not None:
            self.events.emit(
                "freeze.exception_used",
                tenant=env.tenant,
                subject=env.name,
                window=excepted.id,
                reason=excepted.reason,
                what=what,
            )
        return excepted

    def _guard_deploy(self, d: Deployment) -> None:
        """A deploy through any API into an environment's group meets its freeze windows."""
        env = next(
            (e for e in self.environments(tenant=d.tenant) if e.group_id == d.group_id), None
        )
        if env is None:
            return
        label = ACTOR.get()
        self._admit(env, [Actor(label, (label.partition(":")[2],))], f"deploy of {d.name}")

    def watch(self, now: float) -> None:
        """freeze.started / freeze.ended for windows that became active or inactive (a
        window deleted while active ends too). Decided by `rules.freeze_transitions`."""
        windows = self.store.freeze_windows(tenant=None)
        active = {w.id: w for w in rules.active_windows(windows, now)}
        before = self._active
        if before is None:
            before = rules.announced_before(active, now, TAKEOVER_GRACE_S)
        started, ended = rules.freeze_transitions(before, active)
        for w in started:
            self.events.emit(
                "freeze.started",
                tenant=w.tenant,
                subject=self._env_name(w),
                window=w.id,
                reason=w.reason,
                end=w.end,
            )
        for w in ended:
            self.events.emit(
                "freeze.ended", tenant=w.tenant, subject=self._env_name(w), window=w.id
            )
        self._active = active

    def _env_name(self, w: FreezeWindow) -> str:
        env = self.store.get_environment(w.environment_id, tenant=w.tenant)
        return env.name if env is not None else w.environment_id

    async def run(self) -> None:
        """The lease holder's watch; each tenure starts from what is in force now."""
        self._active = None
        while True:
            try:
                self.watch(time.time())
            except Exception:
                log.exception("freeze window watch failed")
            await asyncio.sleep(WATCH_S)

    # --- target groups --------------------------------------------------------------------

    def create_target_group(
        self, env_id: str, group: TargetGroup, *, tenant: str = DEFAULT_TENANT
    ) -> TargetGroup:
        env = self.environment(env_id, tenant=tenant)
        _check_name(group.name, "target group")
        now = time.time()
        created = msgspec.structs.replace(
            group,
            id=str(uuid.uuid4()),
            environment_id=env.id,
            created_at=now,
            updated_at=now,
            tenant=tenant,
        )
        self.store.put_target_group(created)
        return created

    def target_groups(self, env_id: str, *, tenant: str = DEFAULT_TENANT) -> list[TargetGroup]:
        return self.store.target_groups(self.environment(env_id, tenant=tenant).id)

    def target_group(self, group_id: str, *, tenant: str = DEFAULT_TENANT) -> TargetGroup:
        group = self.store.get_target_group(group_id, tenant=tenant)
        if group is None:
            raise NotFound(f"target group {group_id!r} does not exist")
        return group

    def update_target_group(
        self, group_id: str, changes: dict[str, Any], *, tenant: str = DEFAULT_TENANT
    ) -> TargetGroup:
        group = self.target_group(group_id, tenant=tenant)
        updated = msgspec.structs.replace(group, **changes, updated_at=time.time())
        _check_name(updated.name, "target group")
        self.store.put_target_group(updated)
        return updated

    def delete_target_group(self, group_id: str, *, tenant: str = DEFAULT_TENANT) -> None:
        group = self.target_group(group_id, tenant=tenant)
        members = [
            t
            for t in self.store.targets_of(tenant=tenant, environment_id=group.environment_id)
            if t.target_group_id == group.id
        ]
        if members:
            raise Conflict(f"target group {group.name!r} has {len(members)} target(s)")
        self.store.delete_target_group(group.id)

    # --- targets --------------------------------------------------------------------------

    async def create_target(self, target: Target, *, tenant: str = DEFAULT_TENANT) -> Target:
        env = self.environment(target.environment_id, tenant=tenant)
        now = time.time()
        created = msgspec.structs.replace(
            target,
            id=str(uuid.uuid4()),
            environment_id=env.id,
            health_status="unknown",
            created_at=now,
            updated_at=now,
            tenant=tenant,
        )
        self._check_target(created)
        self.store.put_target(created)
        await self._bind(tenant)
        return self.target(created.id, tenant=tenant)

    async def update_target(
        self, target_id: str, changes: dict[str, Any], *, tenant: str = DEFAULT_TENANT
    ) -> Target:
        target = self.target(target_id, tenant=tenant)
        before_env = self.environment(target.environment_id, tenant=tenant)
        if "environment_id" in changes:
            changes["environment_id"] = self.environment(
                changes["environment_id"], tenant=tenant
            ).id
        rebind = {"connection", "machine_id", "target_type"} & set(changes)
        updated = msgspec.structs.replace(target, **changes, updated_at=time.time())
        if rebind and not updated.explicit_machine:
            updated = msgspec.structs.replace(updated, machine_id="")
        self._check_target(updated)
        self.store.put_target(updated)
        await self._bind(tenant)
        await self._sync_group(before_env)
        return self.target(target.id, tenant=tenant)

    async def delete_target(self, target_id: str, *, tenant: str = DEFAULT_TENANT) -> None:
        """The target's machine leaves the environment's group (and loses its units)."""
        target = self.target(target_id, tenant=tenant)
        self.store.delete_target(target.id)
        await self._sync_group(self.environment(target.environment_id, tenant=tenant))

    def target(self, target_id: str, *, tenant: str = DEFAULT_TENANT) -> Target:
        target = self.store.get_target(target_id, tenant=tenant)
        if target is None:
            raise NotFound(f"target {target_id!r} does not exist")
        return target

    def targets(
        self,
        *,
        tenant: str = DEFAULT_TENANT,
        environment_id: str | None = None,
        target_type: str | None = None,
        labels: dict[str, str] | None = None,
        health_status: str | None = None,
    ) -> list[Target]:
        env = self.environment(environment_id, tenant=tenant).id if environment_id else None
        if target_type is not None and target_type not in TARGET_TYPES:
            raise Invalid(f"targetType: must be one of {', '.join(TARGET_TYPES)}")
        if health_status is not None and health_status not in HEALTH_STATUSES:
            raise Invalid(f"healthStatus: must be one of {', '.join(HEALTH_STATUSES)}")
        return [
            t
            for t in self.store.targets_of(tenant=tenant, environment_id=env)
            if (target_type is None or t.target_type == target_type)
            and (health_status is None or t.health_status == health_status)
            and rules.label_match(t.labels, labels or {})
        ]

    def _check_target(self, target: Target) -> None:
        _check_name(target.name, "target")
        if target.target_type not in TARGET_TYPES:
            raise Invalid(f"targetType: must be one of {', '.join(TARGET_TYPES)}")
        if target.target_group_id:
            group = self.store.get_target_group(target.target_group_id, tenant=target.tenant)
            if group is None or group.environment_id != target.environment_id:
                raise Invalid(
                    f"targetGroupId: target group {target.target_group_id!r} does not exist"
                    " in this environment"
                )
        if target.explicit_machine:
            machine = self.deployments.storage.get_machine(target.machine_id)
            if machine is None or machine.tenant != target.tenant or machine.revoked:
                raise Invalid(f"machineId: machine {target.machine_id!r} does not exist")
        if target.target_type in AGENT_DRIVEN and not (
            target.explicit_machine or str(target.connection.get("host", "")).strip()
        ):
            raise Invalid("connection.host (or machineId): required for an agent-driven target")

    async def _bind(self, tenant: str) -> None:
        """Bind unbound agent-driven targets to the machines they name, then bring every
        touched environment's machine group up to date. The machines are read only when
        a target is unbound: this runs on every agent's Hello, and reading the whole
        fleet each time made a reconnect wave quadratic (bench/bench_ha.py)."""
        targets = self.store.targets_of(tenant=tenant)
        unbound = [t for t in targets if t.target_type in AGENT_DRIVEN and not t.machine_id]
        machines = self.deployments.machines(tenant=tenant) if unbound else []
        touched: set[str] = set()
        for t in unbound:
            match = next(
                (
                    mach
                    for mach in machines
                    if rules.binds_to(t, mach.hostname, mach.primary_ip, mach.id)
                ),
                None,
            )
            if match is not None:
                self.store.put_target(
                    msgspec.structs.replace(t, machine_id=match.id, updated_at=time.time())
                )
                log.info("target %s bound to machine %s", t.name, match.id)
                touched.add(t.environment_id)
        for t in targets:  # those bound just now are in `touched` already
            if t.machine_id and t.target_type in AGENT_DRIVEN:
                touched.add(t.environment_id)
        for env_id in sorted(touched):
            env = self.store.get_environment(env_id, tenant=tenant)
            if env is not None:
                await self._sync_group(env)

    async def _sync_group(self, env: Environment) -> None:
        wanted = sorted(
            {
                t.machine_id
                for t in self.store.targets_of(tenant=env.tenant, environment_id=env.id)
                if t.machine_id and t.target_type in AGENT_DRIVEN
            }
        )
        group = self.deployments.store.get_group(env.group_id, tenant=env.tenant)
        if group is not None and sorted(group.machines) != wanted:
            await self.deployments.update_group(group.id, machines=wanted, tenant=env.tenant)

    async def _on_connected(self, machine_ids: list[str]) -> None:
        """Machines that enrol (or come back) bind the targets that name them: once per
        tenant of the wave."""
        hub = self.deployments.hub
        tenants = {s.tenant for mid in machine_ids if (s := hub.sessions.get(mid)) is not None}
        for tenant in sorted(tenants):
            try:
                await self._bind(tenant)
            except Exception:  # a hook must not break the agents' sessions
                log.exception("binding targets to machines of tenant %s failed", tenant)

    def _driven(self, target: Target) -> None:
        if target.target_type not in AGENT_DRIVEN:
            raise Unprocessable(
                f"target {target.name!r} is a {target.target_type}: not driven by Moorage agents"
            )

    # --- what the target's agent says -----------------------------------------------------

    def _release_on(self, env: Environment, machine_id: str) -> tuple[Deployment, Release] | None:
        """The environment's deployment and the release it points the machine at."""
        mine = {d.name: d for d in self._deployments_of(env)}
        for dep_name, release_id in self.deployments.store.machine_targets(machine_id):
            if dep_name in mine:
                release = self.deployments.store.get_release(release_id)
                if release is not None:
                    return mine[dep_name], release
        return None

    async def health_check(
        self, target_id: str, *, tenant: str = DEFAULT_TENANT
    ) -> tuple[Target, str]:
        """Ask the target's agent now; returns the updated target and the message."""
        target = self.target(target_id, tenant=tenant)
        self._driven(target)
        await self._bind(tenant)
        target = self.target(target_id, tenant=tenant)
        now = time.time()
        if not target.machine_id:
            status = "unknown"
            message = (
                f"no enrolled machine matches connection.host {target.connection.get('host')!r} yet"
            )
        else:
            env = self.environment(target.environment_id, tenant=tenant)
            on = self._release_on(env, target.machine_id)
            units = [u.name for u in on[1].units] if on else []
            try:
                report = await self.reports.health_check(target.machine_id, units, HEALTH_TIMEOUT_S)
                status, message = rules.health_of(
                    None,
                    report.backends,
                    target.target_type == "docker_host"
                    or any(u.endswith(".container") for u in units),
                    {u: report.units.get(u, "not-found") for u in units},
                )
            except ReportUnavailable as exc:
                status, message = rules.health_of(exc.message, {}, False, {})
        updated = msgspec.structs.replace(
            target,
            health_status=status,
            health_message=message,
            last_health_check=now,
            updated_at=now,
        )
        self.store.put_target(updated)
        return updated, message

    def _bound(self, target_id: str, tenant: str) -> tuple[Target, Environment]:
        target = self.target(target_id, tenant=tenant)
        self._driven(target)
        if not target.machine_id:
            raise NotFound(f"target {target.name!r} is not bound to an enrolled machine yet")
        return target, self.environment(target.environment_id, tenant=tenant)

    def sticker(self, target_id: str, *, tenant: str = DEFAULT_TENANT) -> dict[str, Any]:
        """The sticker the target's agent last reported for the environment's release."""
        target, env = self._bound(target_id, tenant)
        names = {d.name: d for d in self._deployments_of(env)}
        found = [
            s
            for s in self.reports.stickers(target.machine_id, tenant=tenant)
            if s.sticker.deployment in names
        ]
        if not found:
            raise NotFound(f"machine {target.machine_id} has reported no sticker for {env.name!r}")
        latest = max(found, key=lambda s: s.sticker.applied_at)
        sticker = latest.sticker
        release = self.deployments.store.get_release(sticker.release)
        by = self.store.promotions(tenant=tenant, release_id=sticker.release)
        return {
            "releaseId": sticker.release,
            "releaseName": self._release_name(release) if release else sticker.version,
            "version": sticker.version,
            "deployment": sticker.deployment,
            "machineId": target.machine_id,
            "components": [
                {
                    "componentId": unit.hash,
                    "componentName": name,
                    "digest": sticker.image_digests.get(name) or f"sha256:{unit.sha256}",
                }
                for name, unit in sorted(sticker.units.items())
            ],
            "deployedAt": sticker.applied_at,
            "deployedBy": by[0].requested_by_name if by else "",
        }

    def drift(self, target_id: str, *, tenant: str = DEFAULT_TENANT) -> dict[str, Any]:
        """The target's agent's last drift report, for the environment's release."""
        target, env = self._bound(target_id, tenant)
        on = self._release_on(env, target.machine_id)
        reports = self.reports.drift(target.machine_id, tenant=tenant)
        entries = reports[0].entries if reports else []
        if on is None:
            mine = [
                e for e in entries if e.deployment in {d.name for d in self._deployments_of(env)}
            ]
            expected: dict[str, str] = {}
            release_id = ""
        else:
            d, release = on
            mine = [
                e
                for e in entries
                if e.deployment == d.name or e.unit in {u.name for u in release.units}
            ]
            expected = {u.name: u.image_digest or f"sha256:{u.sha256}" for u in release.units}
            release_id = release.id
        actual = dict(expected)
        differences = []
        for e in mine:
            actual[e.unit] = e.actual
            differences.append(
                {
                    "component": e.unit,
                    "kind": e.kind,
                    "expected": e.expected or expected.get(e.unit, ""),
                    "actual": e.actual,
                    "message": e.message,
                }
            )
        return {
            "hasDrift": bool(differences),
            "expected": {"releaseId": release_id, "digest": _combined(expected)},
            "actual": {"digest": _combined(actual)},
            "differences": differences,
            "checkedAt": reports[0].checked_at if reports else 0.0,
        }

    # --- promotions -----------------------------------------------------------------------

    def promotions(
        self, *, tenant: str = DEFAULT_TENANT, env_id: str | None = None, status: str | None = None
    ) -> list[Promotion]:
        env = self.environment(env_id, tenant=tenant).id if env_id else None
        return self.store.promotions(tenant=tenant, environment_id=env, status=status)

    def promotion(self, promotion_id: str, *, tenant: str = DEFAULT_TENANT) -> Promotion:
        p = self.store.get_promotion(promotion_id, tenant=tenant)
        if p is None:
            raise NotFound(f"promotion {promotion_id!r} does not exist")
        return p

    def _succeeded(self, tenant: str) -> dict[str, set[tuple[str, str]]]:
        """Environment id -> (application id, version) pairs that rolled out there."""
        out: dict[str, set[tuple[str, str]]] = {}
        for p in self.store.promotions(tenant=tenant, status="completed"):
            out.setdefault(p.environment_id, set()).add((p.application_id, p.version))
        for env in self.environments(tenant=tenant):
            for d in self._deployments_of(env):
                r = (
                    self.deployments.store.get_release(d.current_release)
                    if d.current_release
                    else None
                )
                if r is not None:
                    out.setdefault(env.id, set()).add((r.application_id, r.version))
        return out

    async def request_promotion(
        self,
        env_id: str,
        actor: Actor,
        *,
        release_id: str = "",
        application_id: str = "",
        version: str = "",
        comment: str = "",
        tenant: str = DEFAULT_TENANT,
        auto: bool = False,
    ) -> Promotion:
        """Ask for a release (or, into the first environment, an application version)
        to go into `env_id`. Checked now: targets, promotion order, freeze windows; it
        rolls out at once when no approvals are needed."""
        env = self.environment(env_id, tenant=tenant)
        envs = self.environments(tenant=tenant)
        source: Release | None = None
        built_by = ""
        if release_id:
            source = self.deployments.store.get_release(release_id, tenant=tenant)
            if source is None:
                raise Invalid(f"releaseId: release {release_id!r} does not exist")
            app = self.deployments.store.get_application(source.application_id, tenant=tenant)
            if app is None:
                raise Invalid(f"releaseId: release {release_id!r} has no application any more")
            version = source.version
            made = self.store.promotions(tenant=tenant, release_id=source.id)
            built_by = made[0].requested_by if made else ""
        elif application_id:
            try:
                app = self.deployments.application(application_id, tenant=tenant)
            except NotFound as exc:
                raise Invalid(f"applicationId: {exc}") from None
            if rules.predecessor(env, envs) is not None and env.promotion_policy != "any":
                raise Invalid(
                    "releaseId: required: a release enters a later environment from the one"
                    " before it (applicationId alone only into the first environment)"
                )
            if not version or version == "latest":
                version = app.version
            if self.deployments.store.version(app.id, version) is None:
                raise Invalid(f"version: application {app.name!r} has no version {version!r}")
        else:
            raise Invalid("releaseId (or applicationId and version): required")
        refusal = rules.order_refusal(env, envs, self._succeeded(tenant), app.id, version)
        if refusal is not None:
            raise Conflict(refusal)
        if not [
            t
            for t in self.store.targets_of(tenant=tenant, environment_id=env.id)
            if t.target_type in AGENT_DRIVEN
        ]:
            raise Unprocessable(
                f"environment {env.name!r} has no target driven by Moorage agents to deploy to"
            )
        excepted = self._admit(env, [actor], f"promotion of {app.name} {version}")
        now = time.time()
        promotion = Promotion(
            id=str(uuid.uuid4()),
            environment_id=env.id,
            application_id=app.id,
            version=version,
            source_release_id=source.id if source else "",
            requested_by=actor.id,
            requested_by_name=actor.display or actor.id,
            built_by=built_by,
            required_approvals=env.required_approvals,
            require_sod=env.require_sod,
            comment=comment,
            auto=auto,
            freeze_exception=excepted.id if excepted else "",
            created_at=now,
            updated_at=now,
            tenant=tenant,
        )
        self.store.put_promotion(promotion)
        self._emit("promotion.requested", promotion, env)
        if rules.approved(env.required_approvals, []):
            return await self._start(promotion, env, source)
        return promotion

    async def approve(
        self, promotion_id: str, actor: Actor, *, comment: str = "", tenant: str = DEFAULT_TENANT
    ) -> Promotion:
        """One approval (403 under separation of duties for the requester and the
        release's builder); the last one needed starts the rollout."""
        p = self.promotion(promotion_id, tenant=tenant)
        refusal = rules.approval_refusal(p, actor.id)
        if refusal is not None:
            if p.status != "pending_approval" or "already" in refusal:
                raise Conflict(refusal)
            raise Forbidden(refusal)
        env = self.environment(p.environment_id, tenant=tenant)
        approvals = [
            *p.approvals,
            Approval(by=actor.id, name=actor.display or actor.id, at=time.time(), comment=comment),
        ]
        if rules.approved(p.required_approvals, approvals):
            # The freeze windows are met again when it would start to roll out.
            requester = Actor(p.requested_by, (p.requested_by_name,))
            excepted = self._admit(env, [requester, actor], f"promotion {p.id}")
            p = msgspec.structs.replace(
                p, freeze_exception=excepted.id if excepted else p.freeze_exception
            )
        p = msgspec.structs.replace(p, approvals=approvals, updated_at=time.time())
        self.store.put_promotion(p)
        self._emit("promotion.approved", p, env, approvals=len(approvals), by=actor.id)
        if rules.approved(p.required_approvals, approvals):
            source = (
                self.deployments.store.get_release(p.source_release_id, tenant=tenant)
                if p.source_release_id
                else None
            )
            return await self._start(p, env, source)
        return p

    def reject(
        self, promotion_id: str, actor: Actor, *, comment: str = "", tenant: str = DEFAULT_TENANT
    ) -> Promotion:
        p = self.promotion(promotion_id, tenant=tenant)
        if p.status != "pending_approval":
            raise Conflict(f"promotion {p.id} is {p.status}, not awaiting approval")
        if p.require_sod and p.requested_by == actor.id:
            raise Forbidden("separation of duties: the requester of a promotion cannot reject it")
        p = msgspec.structs.replace(
            p,
            status="rejected",
            message=f"rejected by {actor.display or actor.id}"
            + (f": {comment}" if comment else ""),
            updated_at=time.time(),
        )
        self.store.put_promotion(p)
        self._emit("promotion.rejected", p, self.environment(p.environment_id, tenant=tenant))
        return p

    async def _start(self, p: Promotion, env: Environment, source: Release | None) -> Promotion:
        """Deploy the version onto the environment's group with the rollout engine."""
        tenant = p.tenant
        app = self.deployments.application(p.application_id, tenant=tenant)
        name = f"{app.name}-{env.name}"[:128]
        try:
            # The environment's deployment of this application, whatever it is called
            # now (an environment renamed keeps its deployments and their stickers).
            existing = next(
                (d for d in self._deployments_of(env) if d.application_id == app.id), None
            ) or self.deployments.store.deployment_by_name(name, tenant=tenant)
            if existing is None:
                d, _ = self.deployments.create_deployment(
                    name, app.id, env.group_id, application_version=p.version, tenant=tenant
                )
            else:
                if existing.group_id != env.group_id:
                    raise Conflict(f"deployment {name!r} exists outside environment {env.name!r}")
                d = self.deployments.update_deployment(
                    existing.id, application_version=p.version, tenant=tenant
                )
            timeout_s, min_healthy_s = rules.rollout_settings(env.config)
            release = await self.deployments.deploy(
                d.id,
                tenant=tenant,
                units_from=source,
                timeout_s=timeout_s,
                min_healthy_s=min_healthy_s,
                admitted=True,
            )
        except DomainError as exc:
            failed = msgspec.structs.replace(
                p, status="failed", message=str(exc), updated_at=time.time()
            )
            self.store.put_promotion(failed)
            self._emit("promotion.failed", failed, env, message=str(exc))
            raise
        started = msgspec.structs.replace(
            p,
            status="deploying",
            release_id=release.id,
            deployment_id=d.id,
            message=release.message,
            updated_at=time.time(),
        )
        self.store.put_promotion(started)
        if release.status in ("Success", "Failed"):  # no machines: finished at once
            self._finish(started, release.status == "Success", release.message)
        return self.promotion(p.id, tenant=tenant)

    def _on_rollout(self, event: Event) -> None:
        release_id = str(event.data.get("release", ""))
        for p in self.store.promotions(tenant=event.tenant, release_id=release_id):
            if p.status == "deploying":
                self._finish(
                    p, event.kind == "deployment.completed", str(event.data.get("message", ""))
                )

    def _finish(self, p: Promotion, ok: bool, message: str) -> None:
        done = msgspec.structs.replace(
            p, status="completed" if ok else "failed", message=message, updated_at=time.time()
        )
        self.store.put_promotion(done)
        env = self.store.get_environment(p.environment_id, tenant=p.tenant)
        if env is None:
            return
        self._emit("promotion.completed" if ok else "promotion.failed", done, env, message=message)
        if ok:
            for nxt in rules.auto_promotions(env, self.environments(tenant=p.tenant)):
                task = asyncio.get_running_loop().create_task(self._auto(done, nxt))
                self._work.add(task)
                task.add_done_callback(self._work.discard)

    async def _auto(self, done: Promotion, env: Environment) -> None:
        try:
            await self.request_promotion(
                env.id, SYSTEM, release_id=done.release_id, tenant=done.tenant, auto=True
            )
        except DomainError as exc:
            log.warning("auto-promotion into %s refused: %s", env.name, exc)

    def _emit(self, kind: str, p: Promotion, env: Environment, **data: Any) -> None:
        self.events.emit(
            kind,
            tenant=p.tenant,
            subject=env.name,
            promotion=p.id,
            environment=env.id,
            application=p.application_id,
            version=p.version,
            release=p.release_id,
            status=p.status,
            **data,
        )


def _check_name(name: str, what: str) -> None:
    problem = groups.name_problem(name, what)
    if problem:
        raise Invalid(problem)


def _check_environment(env: Environment) -> None:
    _check_name(env.name, "environment")
    if not 0 <= env.required_approvals <= MAX_APPROVALS:
        raise Invalid(f"requiredApprovals: must be between 0 and {MAX_APPROVALS}")
    if env.promotion_policy not in POLICIES:
        raise Invalid(f"promotionPolicy: must be one of {', '.join(POLICIES)}")
    for key in ("deploymentTimeout", "healthCheckInterval"):
        value = env.config.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
        ):
            raise Invalid(f"config.{key}: must be a positive number of seconds")


def _combined(digests: dict[str, str]) -> str:
    """One digest over every component's (name=digest, by name). Pure."""
    if not digests:
        return ""
    text = "\n".join(f"{k}={v}" for k, v in sorted(digests.items()))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()
