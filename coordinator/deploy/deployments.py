"""Applications, machine groups, deployments and their rollouts: the domain service.

Every API that speaks of applications and deployments (`/api/v2`, `moorctl`) goes
through this one service. An application keeps every version of its manifest; a
deployment binds an application to a machine group; `deploy` cuts an immutable
release (units with their fleet hash and SHA-256, images pinned to digests) and
rolls it out batch by batch. Which release each machine runs is stored per machine
(`deployment_targets`), so during a rollout two batches can run two releases. What
is stored is the truth: a coordinator restarted mid-rollout picks the rollout up
where it was.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import msgspec

from coordinator.deploy import groups, rollout
from coordinator.deploy.manifest import Manifest, ManifestError, parse_manifest
from coordinator.errors import Conflict, Invalid, NotFound, Unavailable
from coordinator.events import EventBus
from coordinator.fleet.units import UnitService
from coordinator.hub.sessions import Hub, Session
from coordinator.models import (
    DEFAULT_TENANT,
    Application,
    ApplicationVersion,
    Deployment,
    DeploymentStatus,
    Machine,
    MachineGroup,
    Release,
    ReleaseJob,
    ReleaseUnit,
)
from coordinator.reports.service import ReportUnavailable
from coordinator.store.ports import (
    DEFAULT_GROUP,
    FleetStore,
    StorageUnavailable,
    TransactionalDeploymentStore,
)
from proto import messages as m
from proto.messages import DesiredUnit
from proto.units import UnitOption, backend_for, unit_file_sha256, unit_hash

log = logging.getLogger(__name__)

TICK_S = 0.5
"""How often running rollouts look at what their machines report."""
COALESCE_S = 0.05
"""After a tick, wakes are gathered this long: a burst of them (thousands of agents
connecting at once) makes one tick, not one each."""
SYNC_EVERY_TICKS = 10
"""Every so many ticks, machines that joined a group get its deployments' releases."""
IMAGE_RESOLVE_TIMEOUT_S = 120.0

__all__ = ["Conflict", "DeploymentService", "Invalid", "NotFound", "Unavailable"]


class ImageResolver(Protocol):
    async def resolve_images(
        self, machine_id: str, images: list[str], timeout_s: float = ...
    ) -> m.ImageResolved: ...


class DeploymentService:
    def __init__(
        self,
        storage: FleetStore,
        store: TransactionalDeploymentStore,
        units: UnitService,
        hub: Hub,
        images: ImageResolver | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.events = events if events is not None else EventBus()
        self.storage = storage
        self.store = store
        self.units = units
        self.hub = hub
        self.images = images
        self._locks: dict[str, asyncio.Lock] = {}
        self._release_units: dict[tuple[str, str], list[DesiredUnit]] = {}
        self._manifests: dict[str, Manifest] = {}
        self._wake = asyncio.Event()
        self._tenants_with_builtin: set[str] = {DEFAULT_TENANT}
        self.deploy_guards: list[Callable[[Deployment], None]] = []
        """Called before every deploy (raising refuses it): environments' freeze windows."""
        units.desired_sources.append(self.machine_units)
        hub.on_connect.append(self._on_connect)

    # --- machine groups -------------------------------------------------------------------

    def create_group(
        self,
        name: str,
        *,
        description: str = "",
        selector: dict[str, str] | None = None,
        machines: list[str] | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[MachineGroup, bool]:
        """A new group of `tenant`, or the existing one when a retried create repeats it
        exactly (the bool says whether it was created)."""
        _check_name(name, "cluster group")
        self._ensure_builtin(tenant)
        existing = self.store.group_by_name(name, tenant=tenant)
        group = MachineGroup(
            id=str(uuid.uuid4()),
            name=name,
            description=description,
            selector=dict(selector or {}),
            machines=sorted(set(machines or [])),
            created_at=time.time(),
            updated_at=time.time(),
            tenant=tenant,
        )
        if existing is not None:
            if _same_group(existing, group):
                return existing, False
            raise Conflict(f"a cluster group named {name!r} already exists (id {existing.id})")
        self.store.put_group(group)
        return group, True

    async def update_group(
        self,
        group_id: str,
        *,
        name: str | None = None,
        description: str | None = None,
        selector: dict[str, str] | None = None,
        machines: list[str] | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> MachineGroup:
        group = self.group(group_id, tenant=tenant)
        if group.builtin and (name not in (None, group.name) or selector or machines):
            raise Invalid(f"the built-in group {group.name!r} always holds every machine")
        if name is not None:
            _check_name(name, "cluster group")
        updated = msgspec.structs.replace(
            group,
            name=group.name if name is None else name,
            description=group.description if description is None else description,
            selector=group.selector if selector is None else dict(selector),
            machines=group.machines if machines is None else sorted(set(machines)),
            updated_at=time.time(),
        )
        self.store.put_group(updated)
        self._wake.set()
        await self.sync_members()
        return updated

    def delete_group(self, group_id: str, *, tenant: str = DEFAULT_TENANT) -> None:
        group = self.group(group_id, tenant=tenant)
        if group.builtin:
            raise Invalid(f"the built-in group {group.name!r} cannot be deleted")
        users = self.store.deployments_using(group_id=group.id)
        if users:
            raise Conflict(
                f"cluster group {group.name!r} is used by deployment(s) "
                + ", ".join(d.name for d in users)
            )
        self.store.delete_group(group.id)

    def group(self, group_id: str, *, tenant: str = DEFAULT_TENANT) -> MachineGroup:
        """By id or by name, in `tenant` (another tenant's group is not found)."""
        self._ensure_builtin(tenant)
        group = self.store.get_group(group_id, tenant=tenant) or self.store.group_by_name(
            group_id, tenant=tenant
        )
        if group is None:
            raise NotFound(f"cluster group {group_id!r} does not exist")
        return group

    def group_members(self, group: MachineGroup) -> list[Machine]:
        """The group's machines (of its tenant only)."""
        return groups.members(group, self.storage.list_machines(tenant=group.tenant))

    def groups(self, *, tenant: str = DEFAULT_TENANT) -> list[MachineGroup]:
        self._ensure_builtin(tenant)
        return self.store.list_groups(tenant=tenant)

    def machines(self, *, tenant: str = DEFAULT_TENANT) -> list[Machine]:
        """The tenant's machines not revoked: what group selectors choose from."""
        return self.storage.list_machines(tenant=tenant)

    def _ensure_builtin(self, tenant: str) -> None:
        """Every tenant has its built-in `default` group (the schema made `default`'s);
        made the first time the tenant's groups are used, remembered after."""
        if tenant not in self._tenants_with_builtin:
            self.store.ensure_builtin_group(tenant, time.time())
            self._tenants_with_builtin.add(tenant)

    # --- applications ---------------------------------------------------------------------

    async def create_application(
        self,
        name: str,
        source_config: str,
        *,
        description: str = "",
        source_type: str = "",
        version: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[Application, bool]:
        """A new application with its first version; a retried create that repeats an
        existing one (same name, same manifest) returns it (False: not created). Name,
        description and version label default to the envelope's metadata.name,
        metadata.description and version."""
        manifest, digest = await _manifest(source_config)
        self._remember(digest, manifest)
        meta = manifest.metadata
        name = name or (meta.name if meta else "")
        if not name:
            raise Invalid("name: required (or metadata.name in the manifest)")
        _check_name(name, "application")
        description = description or (meta.description if meta else "")
        version = version or manifest.version
        _check_version_label(version)
        existing = self.store.application_by_name(name, tenant=tenant)
        if existing is not None:
            if existing.digest == digest:
                return existing, False
            raise Conflict(
                f"an application named {name!r} already exists (id {existing.id});"
                " update it with PUT"
            )
        now = time.time()
        app = Application(
            id=str(uuid.uuid4()),
            name=name,
            description=description,
            source_type=source_type,
            created_at=now,
            updated_at=now,
            tenant=tenant,
        )
        first = ApplicationVersion(
            application_id=app.id,
            number=1,
            label=version or "1",
            source_config=source_config,
            digest=digest,
            created_at=now,
        )
        # A large manifest's write and fsync run in a thread; a concurrent create of the
        # same name is refused inside the write's transaction (Conflict).
        await asyncio.to_thread(self.store.put_application, app, first)
        return self.application(app.id, tenant=tenant), True

    async def update_application(
        self,
        app_id: str,
        *,
        source_config: str | None,
        name: str | None = None,
        description: str | None = None,
        source_type: str | None = None,
        version: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> Application:
        """New metadata and, when the manifest's normalised content changed, a new
        version (an unchanged manifest, comments aside, is not a new version)."""
        self.application(app_id, tenant=tenant)  # 404 before a long parse
        if name is not None:
            _check_name(name, "application")
        _check_version_label(version)
        parsed = None if source_config is None else await _manifest(source_config)
        if parsed is not None:
            self._remember(parsed[1], parsed[0])

        def write() -> str:
            """Read, number and write in one transaction, in a thread: a large manifest's
            write and fsync stay off the loop, and no update or delete in between can
            leave a stale version number or bring a deleted application back."""
            with self.store.batch():
                app = self.application(app_id, tenant=tenant)  # as it is now, after the parse
                now = time.time()
                new_version = None
                if parsed is not None and parsed[1] != app.digest:
                    manifest, digest = parsed
                    number = app.version_number + 1
                    label = version or manifest.version or str(number)
                    _check_version_label(label)
                    new_version = ApplicationVersion(
                        application_id=app.id,
                        number=number,
                        label=label,
                        source_config=source_config or "",
                        digest=digest,
                        created_at=now,
                    )
                updated = msgspec.structs.replace(
                    app,
                    name=app.name if name is None else name,
                    description=app.description if description is None else description,
                    source_type=app.source_type if source_type is None else source_type,
                    updated_at=now,
                )
                self.store.put_application(updated, new_version)
                return app.id

        return self.application(await asyncio.to_thread(write), tenant=tenant)

    def delete_application(self, app_id: str, *, tenant: str = DEFAULT_TENANT) -> None:
        app = self.application(app_id, tenant=tenant)
        users = self.store.deployments_using(application_id=app.id)
        if users:
            raise Conflict(
                f"application {app.name!r} is used by deployment(s) "
                + ", ".join(d.name for d in users)
                + "; delete them first"
            )
        self.store.delete_application(app.id)

    def manifest(self, app: Application) -> Manifest:
        """The latest version's manifest, parsed (cached by digest: versions never change)."""
        cached = self._manifests.get(app.digest)
        if cached is None:
            try:
                cached = parse_manifest(app.source_config)
            except ManifestError as exc:  # stored under older rules: show it, do not fail
                log.warning("application %s: stored manifest no longer parses: %s", app.name, exc)
                cached = Manifest(units=[])
            self._remember(app.digest, cached)
        return cached

    def _remember(self, digest: str, manifest: Manifest) -> None:
        """Cache a parsed manifest by digest: a large one takes seconds to parse, and
        what was parsed off the loop for a write must not be parsed again on it."""
        if len(self._manifests) > 1024:
            self._manifests.clear()
        self._manifests[digest] = manifest

    def applications(self, *, tenant: str = DEFAULT_TENANT) -> list[Application]:
        return self.store.list_applications(tenant=tenant)

    def version_labels(self, app_id: str) -> list[str]:
        """The application's version labels, oldest first (of an application already
        read in its tenant)."""
        return [v.label for v in self.store.versions(app_id)]

    def application(self, app_id: str, *, tenant: str = DEFAULT_TENANT) -> Application:
        """By id, or by name (names are unique per tenant; moorctl uses them), in
        `tenant`: another tenant's application is not found."""
        app = self.store.get_application(app_id, tenant=tenant) or self.store.application_by_name(
            app_id, tenant=tenant
        )
        if app is None:
            raise NotFound(f"application {app_id!r} does not exist")
        return app

    # --- deployments ----------------------------------------------------------------------

    def create_deployment(
        self,
        name: str,
        application_id: str,
        group_id: str,
        *,
        application_version: str = "",
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[Deployment, bool]:
        app = self._application_ref(application_id, "applicationId", tenant)
        group = self._group_ref(group_id, tenant)
        name = name or f"{app.name}-{group.name}"
        _check_name(name, "deployment")
        self._check_version(app, application_version)
        existing = self.store.deployment_by_name(name, tenant=tenant)
        if existing is not None:
            same = (
                existing.application_id == app.id
                and existing.group_id == group.id
                and existing.application_version == application_version
            )
            if same:
                return existing, False
            raise Conflict(
                f"a deployment named {name!r} already exists (id {existing.id}); update it with PUT"
            )
        now = time.time()
        deployment = Deployment(
            id=str(uuid.uuid4()),
            name=name,
            application_id=app.id,
            group_id=group.id,
            application_version=application_version,
            created_at=now,
            updated_at=now,
            tenant=tenant,
        )
        self.store.put_deployment(deployment)
        return deployment, True

    def update_deployment(
        self,
        deployment_id: str,
        *,
        name: str | None = None,
        application_id: str | None = None,
        group_id: str | None = None,
        application_version: str | None = None,
        tenant: str = DEFAULT_TENANT,
    ) -> Deployment:
        """Change what a deployment deploys where; it takes effect at the next deploy
        (a running rollout is never changed under its feet)."""
        d = self.deployment(deployment_id, tenant=tenant)
        app = self._application_ref(application_id or d.application_id, "applicationId", tenant)
        group = self._group_ref(group_id or d.group_id, tenant)
        version = d.application_version if application_version is None else application_version
        self._check_version(app, version)
        if name is not None:
            _check_name(name, "deployment")
            if name != d.name and (d.current_release or self.store.targets(d.id)):
                raise Conflict(
                    f"deployment {d.name!r} has been deployed; its name is on its machines"
                    " (sticker files) and cannot change"
                )
        if group.id != d.group_id and d.status == "Running":
            raise Conflict(f"deployment {d.name!r} has a release running")
        updated = msgspec.structs.replace(
            d,
            name=d.name if name is None else name,
            application_id=app.id,
            group_id=group.id,
            application_version=version,
            updated_at=time.time(),
        )
        self.store.put_deployment(updated)
        return updated

    async def delete_deployment(self, deployment_id: str, *, tenant: str = DEFAULT_TENANT) -> None:
        """Remove a deployment and its units from every machine (409 while it rolls out)."""
        d = self.deployment(deployment_id, tenant=tenant)
        async with self._lock(d.id):
            if self.deployment(d.id, tenant=tenant).status == "Running":
                raise Conflict(f"deployment {d.name!r} has a release running; wait for it")
            affected = self.store.delete_deployment(d.id) or set()
        await self.units.push(affected)

    def deployments(self, *, tenant: str = DEFAULT_TENANT) -> list[Deployment]:
        return self.store.list_deployments(tenant=tenant)

    def deployment(self, deployment_id: str, *, tenant: str = DEFAULT_TENANT) -> Deployment:
        """By id, or by name (names are unique per tenant; moorctl uses them), in
        `tenant`: another tenant's deployment is not found."""
        d = self.store.get_deployment(
            deployment_id, tenant=tenant
        ) or self.store.deployment_by_name(deployment_id, tenant=tenant)
        if d is None:
            raise NotFound(f"deployment {deployment_id!r} does not exist")
        return d

    def releases(self, deployment_id: str, *, tenant: str = DEFAULT_TENANT) -> list[Release]:
        return self.store.list_releases(self.deployment(deployment_id, tenant=tenant).id)

    def release(self, release_id: str, *, tenant: str | None = DEFAULT_TENANT) -> Release:
        """A release of a deployment of `tenant` (None: of any, for the rollout loop)."""
        r = self.store.get_release(release_id, tenant=tenant)
        if r is None:
            raise NotFound(f"deployment release {release_id!r} does not exist")
        return r

    def jobs(self, release_id: str, *, tenant: str = DEFAULT_TENANT) -> list[ReleaseJob]:
        return self.store.jobs(self.release(release_id, tenant=tenant).id)

    def release_jobs(self, release: Release) -> list[ReleaseJob]:
        """The jobs of a release already read (no second lookup)."""
        return self.store.jobs(release.id)

    def _application_ref(self, ref: str, field: str, tenant: str) -> Application:
        app = self.store.get_application(ref, tenant=tenant) or self.store.application_by_name(
            ref, tenant=tenant
        )
        if app is None:
            raise Invalid(f"{field}: application {ref!r} does not exist")
        return app

    def _group_ref(self, ref: str, tenant: str) -> MachineGroup:
        self._ensure_builtin(tenant)
        group = self.store.get_group(ref, tenant=tenant) or self.store.group_by_name(
            ref or DEFAULT_GROUP, tenant=tenant
        )
        if group is None:
            raise Invalid(f"clusterGroupId: cluster group {ref!r} does not exist")
        return group

    def _check_version(self, app: Application, label: str) -> None:
        if label and label != "latest" and self.store.version(app.id, label) is None:
            known = ", ".join(v.label for v in self.store.versions(app.id))
            raise Invalid(
                f"applicationVersion: application {app.name!r} has no version {label!r}"
                f" (it has {known})"
            )

    # --- deploy -----------------------------------------------------------------------------

    async def deploy(
        self,
        deployment_id: str,
        *,
        tenant: str = DEFAULT_TENANT,
        units_from: Release | None = None,
        timeout_s: float | None = None,
        min_healthy_s: float | None = None,
        admitted: bool = False,
    ) -> Release:
        """Cut a release of the deployment's application version and start rolling it
        out onto the tenant's machines; Conflict while another release of the same
        deployment runs.

        `units_from`: a release of the same application version whose units (images
        pinned as they were) the new release carries unchanged (a promotion moves the
        same bytes between environments). `timeout_s`, `min_healthy_s`: the health
        gate's timeout and settling time instead of the manifest's. `admitted`: the
        caller already applied `deploy_guards`."""
        d = self.deployment(deployment_id, tenant=tenant)
        if not admitted:
            for guard in self.deploy_guards:
                guard(d)
        async with self._lock(d.id):
            d = self.deployment(d.id, tenant=tenant)
            if d.status == "Running":
                raise Conflict(f"deployment {d.name!r} already has a release running")
            app = self.application(d.application_id, tenant=tenant)
            label = d.application_version
            version = (
                self.store.version(app.id, label)
                if label and label != "latest"
                else self.store.version(app.id, app.version)
            )
            if version is None:
                raise Invalid(f"application {app.name!r} has no version {label!r}")
            manifest, _ = await _manifest(version.source_config)
            group = self._group_ref(d.group_id, tenant)
            members = [mach for mach in self.group_members(group) if mach.state != "lost"]
            if units_from is not None and units_from.application_id != app.id:
                raise Invalid(f"release {units_from.id} is not of application {app.name!r}")
            units = (
                list(units_from.units)
                if units_from is not None
                else await self._pin(manifest, members)
            )
            self._check_overlap(d, units, [mach.id for mach in members])
            now = time.time()
            size = rollout.batch_size(
                len(members), manifest.rollout.batch_size, manifest.rollout.max_unavailable
            )
            batches = rollout.plan_batches([mach.id for mach in members], size)
            release = Release(
                id=str(uuid.uuid4()),
                deployment_id=d.id,
                seq=self.store.next_release_seq(d.id),
                application_id=app.id,
                version=version.label,
                version_number=version.number,
                units=units,
                batch_size=size,
                min_healthy_s=(
                    manifest.rollout.min_healthy_s if min_healthy_s is None else min_healthy_s
                ),
                timeout_s=manifest.rollout.timeout_s if timeout_s is None else timeout_s,
                rollback_on_failure=manifest.rollout.rollback_on_failure,
                drift_policy=manifest.drift_policy,
                previous_release=d.current_release,
                status="Running",
                batches=len(batches),
                created_at=now,
                updated_at=now,
            )
            jobs = [
                ReleaseJob(id=str(uuid.uuid4()), release_id=release.id, machine_id=mid, batch=i)
                for i, batch in enumerate(batches)
                for mid in batch
            ]
            self.store.create_release(release, jobs)
            self.events.emit(
                "deployment.started",
                tenant=d.tenant,
                subject=d.name,
                release=release.id,
                version=release.version,
                machines=len(members),
                batches=len(batches),
            )
            log.info(
                "deployment %s: release %s (version %s) to %d machine(s) in %d batch(es)",
                d.name,
                release.id,
                release.version,
                len(members),
                len(batches),
            )
            await self._advance(
                self.release(release.id, tenant=tenant), self.store.jobs(release.id)
            )
        self._wake.set()
        return self.release(release.id, tenant=tenant)

    async def _pin(self, manifest: Manifest, members: list[Machine]) -> list[ReleaseUnit]:
        """The release's units: every container image pinned to a digest, asked of a
        connected Docker machine of the group (which pulls what it lacks)."""
        from proto.container import parse_container

        images: dict[str, str] = {}
        for unit in manifest.units:
            if backend_for(unit.name) == "docker":
                images[unit.name] = parse_container(unit.options).image
        pins = {
            ref: (ref, "sha256:" + ref.rpartition("@sha256:")[2])
            for ref in images.values()
            if "@sha256:" in ref
        }
        to_resolve = sorted(set(images.values()) - set(pins))
        if to_resolve:
            pins.update(await self._resolve(to_resolve, members))
        out = []
        for unit in manifest.units:
            options = unit.options
            digest = ""
            if unit.name in images:
                reference, digest = pins[images[unit.name]]
                options = [
                    UnitOption(o.section, o.name, reference)
                    if o.section == "Container" and o.name == "Image"
                    else o
                    for o in options
                ]
            out.append(
                ReleaseUnit(
                    name=unit.name,
                    options=options,
                    hash=unit_hash(options),
                    sha256=unit_file_sha256(options),
                    image=images.get(unit.name, ""),
                    image_digest=digest,
                )
            )
        return out

    async def _resolve(self, refs: list[str], members: list[Machine]) -> dict[str, tuple[str, str]]:
        online = self.hub.connected_ids()  # asked through a relay when elsewhere
        candidates = [
            mach.id for mach in members if mach.id in online and "docker" in mach.capabilities
        ]
        if not candidates or self.images is None:
            raise Unavailable(
                f"cannot pin image(s) {', '.join(refs)} to a digest: no machine of the group"
                " with Docker is connected"
            )
        try:
            answer = await self.images.resolve_images(
                candidates[0], refs, timeout_s=IMAGE_RESOLVE_TIMEOUT_S
            )
        except ReportUnavailable as exc:
            raise Unavailable(f"cannot pin image(s) {', '.join(refs)}: {exc}") from None
        if answer.errors:
            raise Invalid(
                "cannot pin image(s): "
                + "; ".join(f"{ref}: {why}" for ref, why in sorted(answer.errors.items()))
            )
        out: dict[str, tuple[str, str]] = {}
        for ref in refs:
            digest = answer.digests.get(ref, "")
            reference = answer.references.get(ref, "") or digest
            if not digest:
                raise Invalid(f"cannot pin image {ref}: machine {candidates[0]} did not say")
            out[ref] = (reference, digest)
        return out

    def _check_overlap(
        self, d: Deployment, units: list[ReleaseUnit], machine_ids: list[str]
    ) -> None:
        """A unit name is one unit per machine: refuse to put a release's unit where a
        fleet unit or another deployment's unit of that name already is."""
        names = {u.name for u in units}
        for mid in machine_ids:
            for unit in self.storage.list_units(machine_id=mid):
                if unit.name in names:
                    raise Conflict(
                        f"unit {unit.name} is already on machine {mid} as a fleet unit;"
                        " rename it in the manifest or destroy the fleet unit"
                    )
            for name, theirs in sorted(self.machine_units(mid).items()):
                owner = theirs.labels.get(m.LABEL_DEPLOYMENT, "")
                if name in names and owner != d.name:
                    raise Conflict(
                        f"unit {name} is already on machine {mid} from deployment {owner!r}"
                    )

    # --- rollouts -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive every running rollout (also those a restart interrupted)."""
        ticks = 0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.tick(time.time())
                ticks += 1
                if ticks % SYNC_EVERY_TICKS == 0:
                    await self.sync_members()
            except StorageUnavailable as exc:
                # the store reports its own outage once (full disk, database away):
                # a traceback per tick would only bury it
                log.debug("rollout step waits for the storage: %s", exc)
            except Exception:
                log.exception("rollout step failed")
            await asyncio.sleep(COALESCE_S)

    async def tick(self, now: float) -> None:
        running = self.store.releases_with_status("Running")
        if not running:
            return
        self.hub.buffer.flush()  # judge by the newest reports
        for release in running:
            async with self._lock(release.deployment_id):
                current = self.store.get_release(release.id)
                if current is None or current.status != "Running":
                    continue
                jobs = self.store.jobs(current.id)
                evaluated = [self._evaluate(current, j, now) for j in jobs]
                changed = [j for j, old in zip(evaluated, jobs, strict=True) if j != old]
                if changed:
                    self.store.update_jobs(changed)
                await self._advance(current, evaluated)

    def _evaluate(self, release: Release, job: ReleaseJob, now: float) -> ReleaseJob:
        if job.status != "Running":
            return job
        states = {s.name: s for s in self.storage.unit_states(machine_id=job.machine_id)}
        machine = self.storage.get_machine(job.machine_id)
        if machine is None or machine.revoked:
            return msgspec.structs.replace(
                job, status="Failed", message="machine was revoked", finished_at=now
            )
        fleet_units = {u.name for u in self.storage.list_units(machine_id=job.machine_id)}
        clash = sorted(fleet_units & {u.name for u in release.units})
        if clash:
            return msgspec.structs.replace(
                job,
                status="Failed",
                message=f"{clash[0]} on this machine is a fleet unit of the same name",
                finished_at=now,
            )
        return rollout.evaluate_job(job, release, states, now)

    async def _advance(self, release: Release, jobs: list[ReleaseJob]) -> None:
        """Start the current batch if it has not started, or take the next step."""
        now = time.time()
        current = [j for j in jobs if j.batch == release.batch]
        if current and all(j.status == "Created" for j in current):
            await self._start_batch(release, current, now)
            return
        step = rollout.next_step(release, jobs)
        if step in ("advance", "succeed", "fail") and release.batches:
            d = self.store.get_deployment(release.deployment_id)
            self.events.emit(
                "rollout.batch",
                tenant=d.tenant if d else DEFAULT_TENANT,
                subject=d.name if d else release.deployment_id,
                release=release.id,
                batch=release.batch + 1,
                batches=release.batches,
                machines=len(current),
                outcome="failed" if step == "fail" else "succeeded",
            )
        if step == "advance":
            self.store.update_release(
                release.id, status="Running", batch=release.batch + 1, message="", now=now
            )
            nxt = self.release(release.id, tenant=None)
            await self._start_batch(nxt, [j for j in jobs if j.batch == nxt.batch], now)
        elif step == "succeed":
            await self._finish(release, "Success", "", now)
        elif step == "fail":
            failed = [j for j in jobs if j.batch == release.batch and j.status == "Failed"]
            why = "; ".join(f"{j.machine_id}: {j.message}" for j in failed)
            await self._finish(release, "Failed", f"batch {release.batch + 1} failed: {why}", now)

    async def _start_batch(self, release: Release, batch: list[ReleaseJob], now: float) -> None:
        """Point the batch's machines at the release, then mark its jobs running: in
        this order, a leader killed between the two leaves the jobs "Created" and the
        next leader starts the batch again (pointing is idempotent); the other order
        would leave jobs running towards a release no machine was given, until they
        time out and fail the rollout."""
        affected = self.store.set_targets(
            release.deployment_id, {j.machine_id: release.id for j in batch}
        )
        self.store.update_jobs(
            [msgspec.structs.replace(j, status="Running", started_at=now) for j in batch]
        )
        self.store.update_release(
            release.id,
            status="Running",
            batch=release.batch,
            message=f"batch {release.batch + 1} of {release.batches}",
            now=now,
        )
        await self.units.push(affected)

    async def _finish(
        self, release: Release, status: DeploymentStatus, message: str, now: float
    ) -> None:
        d = self.store.get_deployment(release.deployment_id)
        if d is None:
            raise NotFound(f"deployment {release.deployment_id!r} does not exist")
        rolled_back = False
        if status == "Failed" and release.rollback_on_failure:
            started = {j.machine_id for j in self.store.jobs(release.id) if j.status != "Created"}
            back: dict[str, str | None] = {
                mid: (release.previous_release or None) for mid in started
            }
            affected = self.store.set_targets(d.id, back)
            await self.units.push(affected)
            rolled_back = True
            message += (
                f"; rolled back to release {release.previous_release}"
                if release.previous_release
                else "; rolled back (removed from the machines: no earlier release)"
            )
        if status == "Success" and release.batches == 0:
            message = "the cluster group has no machines; new members will get this release"
        # One transaction: a leader killed between the two would leave the deployment
        # "Running" with no running release to finish it (and every later deploy 409).
        with self.store.batch():
            self.store.update_release(
                release.id,
                status=status,
                batch=release.batch,
                message=message,
                now=now,
                finished=True,
                rolled_back=rolled_back,
            )
            self.store.set_deployment_status(
                d.id, status, now, current_release=release.id if status == "Success" else None
            )
        log.info("deployment %s: release %s %s %s", d.name, release.id, status, message)
        self.events.emit(
            "deployment.completed" if status == "Success" else "deployment.failed",
            tenant=d.tenant,
            subject=d.name,
            release=release.id,
            version=release.version,
            message=message,
            rolled_back=rolled_back,
        )

    # --- group membership --------------------------------------------------------------------

    async def sync_members(self) -> None:
        """Machines that joined a group get the deployment's current release; machines
        that left it (or were revoked) lose its units. Running rollouts are left alone."""
        settled = [
            d for d in self.store.list_deployments() if d.status != "Running" and d.current_release
        ]
        if not settled:
            return
        machines = self.storage.list_machines(include_revoked=True)
        affected: set[str] = set()
        for d in settled:
            group = self.store.get_group(d.group_id)
            if group is None:
                continue
            wanted = {mach.id for mach in groups.members(group, machines)}
            targets = self.store.targets(d.id)
            changes: dict[str, str | None] = {
                mid: d.current_release for mid in wanted if mid not in targets
            }
            changes.update({mid: None for mid in targets if mid not in wanted})
            if changes:
                affected |= self.store.set_targets(d.id, changes)
        if affected:
            log.info("group membership changed the deployments of %d machine(s)", len(affected))
            await self.units.push(affected)

    async def _on_connect(self, session: Session) -> None:
        self._wake.set()

    # --- what machines run ---------------------------------------------------------------------

    def machine_units(self, machine_id: str) -> dict[str, DesiredUnit]:
        """The units of every release a machine is pointed at (a source of UnitService)."""
        out: dict[str, DesiredUnit] = {}
        for dep_name, release_id in self.store.machine_targets(machine_id):
            for unit in self._desired_units(dep_name, release_id):
                out.setdefault(unit.name, unit)
        return out

    def _desired_units(self, deployment: str, release_id: str) -> list[DesiredUnit]:
        """Releases are immutable, so their desired units are built once."""
        key = (deployment, release_id)
        cached = self._release_units.get(key)
        if cached is None:
            release = self.store.get_release(release_id)
            if release is None:
                return []
            labels = {
                m.LABEL_DEPLOYMENT: deployment,
                m.LABEL_RELEASE: release.id,
                m.LABEL_VERSION: release.version,
                m.LABEL_DRIFT: release.drift_policy,
            }
            cached = self._release_units[key] = [
                DesiredUnit(
                    name=u.name,
                    options=list(u.options),
                    desired_state="launched",
                    hash=u.hash,
                    labels=labels,
                    image_digest=u.image_digest,
                )
                for u in release.units
            ]
        return cached

    def _lock(self, deployment_id: str) -> asyncio.Lock:
        return self._locks.setdefault(deployment_id, asyncio.Lock())


def _check_name(name: str, what: str) -> None:
    problem = groups.name_problem(name, what)
    if problem:
        raise Invalid(problem)


def _check_version_label(label: str) -> None:
    problem = groups.version_problem(label)
    if problem:
        raise Invalid(problem)


@functools.cache
def _parsers() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for manifest parsing, at a lower CPU priority than the event loop's
    thread: on a busy machine the loop keeps its share while a large manifest parses."""

    def lower_priority() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)

    return concurrent.futures.ThreadPoolExecutor(
        max_workers=2, thread_name_prefix="manifest", initializer=lower_priority
    )


async def _manifest(source_config: str) -> tuple[Manifest, str]:
    """The manifest and its digest. Parsing a large manifest is seconds of pure
    Python (and its digest tens of milliseconds): never on the event loop."""

    def parse() -> tuple[Manifest, str]:
        manifest = parse_manifest(source_config)
        return manifest, manifest.digest()

    try:
        return await asyncio.get_running_loop().run_in_executor(_parsers(), parse)
    except ManifestError as exc:
        raise Invalid(f"sourceConfig: {exc}") from None


def _same_group(a: MachineGroup, b: MachineGroup) -> bool:
    return (a.description, a.selector, sorted(a.machines)) == (
        b.description,
        b.selector,
        sorted(b.machines),
    )
