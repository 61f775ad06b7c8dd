"""The WebOps domain service: one service behind both HTTP surfaces (`/api/v1/deployments`
by id, `/api/deployments` by name).

A create stores the deployment (pending), picks a connected machine of the tenant and
a port, and sends that machine's agent a `WebBuild` (building). The agent fetches the
repository, builds it in a new build directory and reports log lines (`WebLog`) and
the outcome (`WebBuilt`). A good build becomes an ordinary Moorage unit pinned to the
machine through the `UnitService` (so drift, stickers, restart safety apply) and the
agent puts the domain on its nginx; a failed build leaves the previous unit — and so
the previous build — serving. Health comes from the agent's HTTP checks (`WebHealth`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Annotated, Literal, Protocol

import msgspec

from coordinator.errors import Conflict, DomainError, Invalid, NotFound, Unavailable
from coordinator.events import EventBus
from coordinator.fleet.units import UnitService
from coordinator.hub.sessions import Hub, Session
from coordinator.store.ports import MachineStore, WebOpsStore
from coordinator.webops import rules
from coordinator.webops.records import BulkJob, BulkResult, WebDeployment, WebLogItem, WebQuery
from proto import messages as m
from proto import webops as w

log = logging.getLogger(__name__)

MAX_LOG_MESSAGE = 4096
MAX_LOG_ITEMS = 10_000
"""Log items kept per deployment (the oldest go first; the journal keeps everything)."""
PRUNE_EVERY = 500


EnvKey = Annotated[str, msgspec.Meta(pattern=w.ENV_KEY_PATTERN)]
EnvValue = Annotated[str, msgspec.Meta(max_length=w.MAX_ENV_VALUE, pattern=w.ENV_VALUE_PATTERN)]
EnvVars = Annotated[dict[EnvKey, EnvValue], msgspec.Meta(max_length=w.MAX_ENV_VARS)]


class CreateRequest(msgspec.Struct, frozen=True, kw_only=True):
    name: Annotated[str, msgspec.Meta(pattern=w.NAME_PATTERN)]
    repo_url: Annotated[str, msgspec.Meta(max_length=2048, pattern=w.REPO_URL_PATTERN)]
    branch: Annotated[str, msgspec.Meta(pattern=w.BRANCH_PATTERN)] = "main"
    project_type: Literal["", "static", "python", "django", "docker", "node"] = ""
    """"": detected from the repository."""
    domain: Annotated[str, msgspec.Meta(max_length=253, pattern=w.OPTIONAL_DOMAIN_PATTERN)] = ""
    env_vars: EnvVars = {}
    port: Annotated[int, msgspec.Meta(ge=1024, le=65535)] | None = None
    """None: the machine's next free port from 8001."""
    machine: Annotated[str, msgspec.Meta(max_length=128)] = ""
    """"": a connected machine of the tenant."""


class Health(msgspec.Struct, frozen=True):
    is_healthy: bool = False
    status: int = 0
    detail: str = ""
    last_check: float = 0.0
    healthy_since: float = 0.0
    memory_bytes: int = 0
    cpu_ns: int = 0
    cpu_percent: float = 0.0
    """Of one CPU, between the last two reports."""


def cpu_percent(old: Health, cpu_ns: int, at: float) -> float:
    """CPU use between two reports, in percent of one CPU (0 without two). Pure."""
    span = at - old.last_check
    if not old.cpu_ns or not cpu_ns or span <= 0 or cpu_ns < old.cpu_ns:
        return old.cpu_percent if cpu_ns == old.cpu_ns and span <= 0 else 0.0
    return round(100.0 * (cpu_ns - old.cpu_ns) / (span * 1e9), 2)


class WebStore(WebOpsStore, MachineStore, Protocol):
    pass


BULK_ACTIONS = ("restart", "stop", "start", "redeploy", "delete")
MAX_BULK = 100
MAX_JOBS = 200
"""Bulk jobs kept (in the store, the newest) for polling."""


class BulkRequest(msgspec.Struct, frozen=True):
    action: Literal["restart", "stop", "start", "redeploy", "delete"]
    deployment_ids: Annotated[
        list[Annotated[int, msgspec.Meta(ge=1)]], msgspec.Meta(min_length=1, max_length=MAX_BULK)
    ]
    run_async: bool = msgspec.field(default=False, name="async")


def error_code(exc: DomainError) -> int:
    """Pure; as the HTTP conventions map domain errors."""
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    if isinstance(exc, Unavailable):
        return 503
    return 400


def check_create(req: CreateRequest) -> None:
    """400 naming the first bad field. Pure."""
    for problem in (
        w.name_problem(req.name),
        w.repo_url_problem(req.repo_url),
        w.branch_problem(req.branch),
        w.domain_problem(req.domain),
        w.env_problem(req.env_vars),
    ):
        if problem:
            raise Invalid(problem)
    if req.project_type and req.project_type not in w.PROJECT_TYPES:
        raise Invalid(
            f"unknown project_type {req.project_type!r}: one of {', '.join(w.PROJECT_TYPES)}"
        )
    if req.port is not None and not 1024 <= req.port <= 65535:
        raise Invalid("port must be between 1024 and 65535")


class WebOpsService:
    def __init__(
        self,
        storage: WebStore,
        units: UnitService,
        hub: Hub,
        events: EventBus | None = None,
    ) -> None:
        self.storage = storage
        self.units = units
        self.hub = hub
        self.events = events if events is not None else EventBus()
        self.health: dict[int, Health] = {}
        self._runtime_count: dict[tuple[str, str], int] = {}
        """(machine, deployment name) -> runtime items seen (when to prune)."""
        self.coordinator_id = ""
        """Set by the server: marks the bulk jobs this coordinator runs."""
        self._job_tasks: set[asyncio.Task[None]] = set()
        hub.handlers.append(self._on_message)
        hub.on_connected.append(self._on_connected)

    # --- queries ------------------------------------------------------------------------

    def get(self, tenant: str, name: str) -> WebDeployment:
        dep = self.storage.webops_get(tenant, name)
        if dep is None:
            raise NotFound(f"deployment {name!r} does not exist")
        return dep

    def get_id(self, tenant: str, dep_id: int) -> WebDeployment:
        dep = self.storage.webops_get_id(dep_id, tenant)
        if dep is None:
            raise NotFound(f"deployment {dep_id} does not exist")
        return dep

    def list_deployments(self, tenant: str, query: WebQuery) -> tuple[list[WebDeployment], int]:
        # An unknown status filter matches nothing (as a search would).
        return self.storage.webops_list(tenant, query)

    def health_of(self, dep: WebDeployment) -> Health:
        return self.health.get(dep.id, Health())

    def logs(
        self,
        dep: WebDeployment,
        *,
        tail: int | None = None,
        level: str = "",
        since: float = 0.0,
        after_id: int = 0,
    ) -> list[WebLogItem]:
        if level and level not in rules.LEVELS:
            raise Invalid(f"unknown level {level!r}: one of {', '.join(rules.LEVELS)}")
        items = self.storage.webops_logs(dep.id, after_id=after_id)
        return rules.page_logs(items, tail=tail, level=level, since=since)

    def counts(self, tenant: str) -> dict[str, int]:
        out = {s: 0 for s in rules.STATUSES}
        for status in rules.STATUSES:
            _, out[status] = self.storage.webops_list(tenant, WebQuery(status=status, limit=0))
        return out

    # --- commands -----------------------------------------------------------------------

    async def create(
        self, tenant: str, req: CreateRequest, *, actor: str = ""
    ) -> tuple[WebDeployment, bool]:
        """(the deployment, whether it was made now). The same name again with the same
        repository and branch is the one already there (clients retry POSTs on 5xx);
        with other ones it is a 409."""
        check_create(req)
        existing = self.storage.webops_get(tenant, req.name)
        if existing is not None:
            if (existing.repo_url, existing.branch) == (req.repo_url, req.branch):
                return existing, False
            raise Conflict(
                f"deployment {req.name!r} already exists with another repository or branch"
            )
        machine = self._pick_machine(tenant, req.machine, req.project_type)
        used = [d.port for d in self.storage.webops_on_machine(machine)]
        if req.port and req.port in used:
            raise Conflict(f"port {req.port} is taken on machine {machine!r}")
        now = time.time()
        dep = WebDeployment(
            tenant=tenant,
            name=req.name,
            repo_url=req.repo_url,
            branch=req.branch,
            project_type=req.project_type,
            domain=req.domain,
            port=req.port or rules.next_port(used),
            machine_id=machine,
            env=dict(req.env_vars),
            created_by=actor,
            created_at=now,
            updated_at=now,
        )
        try:
            dep = self.storage.webops_create(dep)
        except Conflict:
            again = self.storage.webops_get(tenant, req.name)
            if again is None:
                raise
            return again, False
        self._log(dep, "info", f"deployment created on machine {machine}, port {dep.port}")
        self.events.emit("webops.created", tenant=tenant, subject=dep.name)
        await self._build(dep)
        return self.storage.webops_get_id(dep.id, tenant) or dep, True

    async def update(
        self,
        dep: WebDeployment,
        *,
        branch: str | None = None,
        domain: str | None = None,
        env: dict[str, str] | None = None,
    ) -> WebDeployment:
        """Change branch, domain or env; a new branch or domain is built and put on the
        proxy by a redeploy (the current build keeps serving until it succeeds)."""
        for problem in (
            w.branch_problem(branch) if branch is not None else None,
            w.domain_problem(domain) if domain is not None else None,
        ):
            if problem:
                raise Invalid(problem)
        if env is not None:
            dep = await self.set_env(dep, env, unset=set(dep.env) - set(env))
        rebuild = (branch is not None and branch != dep.branch) or (
            domain is not None and domain != dep.domain
        )
        if rebuild:
            if dep.building:
                raise Conflict(f"deployment {dep.name!r} is already building ({dep.building})")
            dep.branch = branch if branch is not None else dep.branch
            dep.domain = domain if domain is not None else dep.domain
            self._save(dep)
            self._log(dep, "info", f"updated: branch {dep.branch}, domain {dep.domain or '-'}")
            await self._build(dep)
        return self.get(dep.tenant, dep.name)

    async def redeploy(self, dep: WebDeployment) -> WebDeployment:
        if dep.building:
            raise Conflict(f"deployment {dep.name!r} is already building ({dep.building})")
        await self._build(dep)
        return self.get(dep.tenant, dep.name)

    async def start(self, dep: WebDeployment) -> WebDeployment:
        if not dep.unit:
            return await self.redeploy(dep) if not dep.building else dep
        await self.units.set_desired_state(dep.unit, "launched", tenant=dep.tenant)
        dep.status = "running"
        self._save(dep)
        self._log(dep, "info", "started")
        return dep

    async def stop(self, dep: WebDeployment) -> WebDeployment:
        if dep.unit:
            await self.units.set_desired_state(dep.unit, "loaded", tenant=dep.tenant)
        dep.status = "stopped"
        self._save(dep)
        self._log(dep, "info", "stopped")
        return dep

    async def restart(self, dep: WebDeployment) -> WebDeployment:
        if not dep.unit:
            raise Conflict(f"deployment {dep.name!r} has no running build to restart")
        if dep.status == "stopped":
            return await self.start(dep)
        await self._send(dep, m.WebEnv(dep.name, dep.env))
        unit = self.units.get(dep.unit, tenant=dep.tenant)
        if dep.unit.endswith(".container") and unit is not None:
            options = rules.restarted(unit.options, time.time_ns())
            await self.units.put(
                dep.unit, options, "launched", machines=[dep.machine_id], tenant=dep.tenant
            )
        else:
            await self._send(dep, m.WebAction(dep.name, "restart", dep.unit))
        self._log(dep, "info", "restart requested")
        return dep

    async def delete(self, dep: WebDeployment) -> None:
        if dep.unit:
            await self.units.destroy(dep.unit, tenant=dep.tenant)
        with contextlib.suppress(Unavailable):
            await self._send(dep, m.WebAction(dep.name, "remove", dep.unit))
        self.storage.webops_delete(dep.id)
        self.health.pop(dep.id, None)
        self.events.emit("webops.deleted", tenant=dep.tenant, subject=dep.name)

    async def set_env(
        self, dep: WebDeployment, values: dict[str, str], unset: Iterable[str] = ()
    ) -> WebDeployment:
        problem = w.env_problem(values)
        if problem:
            raise Invalid(problem)
        env = dict(dep.env)
        env.update(values)
        for key in unset:
            if key not in env:
                raise NotFound(f"env var {key!r} is not set")
            env.pop(key)
        dep.env = env
        self._save(dep)
        with contextlib.suppress(Unavailable):
            await self._send(dep, m.WebEnv(dep.name, env))
        self._log(dep, "info", f"environment changed ({len(env)} variables)")
        return dep

    # --- bulk and export (#21) ----------------------------------------------------------

    async def bulk(self, tenant: str, req: BulkRequest) -> BulkJob:
        """Run `action` on each deployment (in order, each on its own: one failing does
        not stop the others). With `async`, the job is answered at once, running; poll
        it with `job`."""
        if len(set(req.deployment_ids)) != len(req.deployment_ids):
            raise Invalid("deployment_ids has duplicates")
        job = BulkJob(
            id=uuid.uuid4().hex,
            tenant=tenant,
            action=req.action,
            total=len(req.deployment_ids),
            runner=self.coordinator_id,
            created_at=time.time(),
        )
        self.storage.bulk_job_save(job, keep=MAX_JOBS)
        if req.run_async:
            task = asyncio.create_task(self._run_bulk(job, req.deployment_ids))
            self._job_tasks.add(task)
            task.add_done_callback(self._job_tasks.discard)
        else:
            await self._run_bulk(job, req.deployment_ids)
        return job

    def job(self, tenant: str, job_id: str) -> BulkJob:
        """A bulk job, from any coordinator (each result is stored as it comes)."""
        job = self.storage.bulk_job_get(job_id, tenant)
        if job is None:
            raise NotFound(f"bulk job {job_id!r} does not exist")
        return job

    def interrupt_jobs(self) -> int:
        """At start: the jobs this coordinator was running when it stopped will not go
        on (an action may have been half done: the results so far say which)."""
        return self.storage.bulk_jobs_interrupt(self.coordinator_id, time.time())

    async def _run_bulk(self, job: BulkJob, ids: list[int]) -> None:
        for dep_id in ids:
            job.results.append(await self._one(job.tenant, job.action, dep_id))
            if len(job.results) < len(ids):
                self.storage.bulk_job_save(job)
        job.status = "completed"
        job.finished_at = time.time()
        self.storage.bulk_job_save(job)

    async def _one(self, tenant: str, action: str, dep_id: int) -> BulkResult:
        name = ""
        try:
            dep = self.get_id(tenant, dep_id)
            name = dep.name
            if action == "delete":
                await self.delete(dep)
                return BulkResult(dep_id, True, name)
            after: WebDeployment = await getattr(self, action)(dep)
            return BulkResult(dep_id, True, name, after.status)
        except DomainError as exc:
            return BulkResult(dep_id, False, name, error=str(exc), code=error_code(exc))

    def export_pages(self, tenant: str, page: int) -> Iterator[list[WebDeployment]]:
        """The tenant's deployments, oldest first, a page at a time (read as iterated)."""
        after = 0
        while True:
            deps = self.storage.webops_after(tenant, after, page)
            if not deps:
                return
            yield deps
            after = deps[-1].id

    # --- builds -------------------------------------------------------------------------

    def _pick_machine(self, tenant: str, wanted: str, project_type: str = "") -> str:
        """The asked machine (of the tenant), else the connected one with the fewest
        deployments among those that can run the type (docker for Dockerfile apps,
        systemd for the rest; the type is unknown before the build when detected)."""
        known = self.storage.list_machines(tenant=tenant)
        if wanted:
            if wanted not in {mach.id for mach in known}:
                raise NotFound(f"machine {wanted!r} does not exist")
            return wanted
        need = rules.backend_needed(project_type)
        online = self.hub.connected_ids()
        machines = [
            mach.id
            for mach in known
            if mach.id in online and (not need or need in mach.capabilities)
        ]
        if not machines:
            what = f" that can run {need} units" if need else ""
            raise Unavailable(f"no connected machine{what} to deploy to")
        load = {mid: 0 for mid in machines}
        for mid in machines:
            load[mid] = len(self.storage.webops_on_machine(mid))
        return min(sorted(machines), key=lambda mid: load[mid])

    async def _build(self, dep: WebDeployment) -> None:
        dep.build_seq += 1
        dep.building = f"b{dep.build_seq}"
        dep.status = "building"
        self._save(dep)
        self._log(dep, "info", f"build {dep.building}: fetching {dep.repo_url} ({dep.branch})")
        try:
            await self._send(dep, self._build_message(dep))
        except Unavailable as exc:
            # Kept pending: sent when the machine connects again (`_on_connect`).
            self._log(dep, "warning", f"{exc}: the build starts when it is back")

    async def _send(self, dep: WebDeployment, message: m.Message) -> None:
        """To the machine's agent, through the coordinator holding its session when that
        is another one (#23): its reports are then handled there, from the store."""
        async with self.hub.reaching(dep.machine_id) as session:  # RelayFailed: Unavailable
            if session is None:
                raise Unavailable(f"machine {dep.machine_id!r} is not connected")
            try:
                await session.send(message)
            except ConnectionError as exc:
                raise Unavailable(f"machine {dep.machine_id!r}: {exc}") from None

    def _failed(self, dep: WebDeployment, build_id: str, error: str) -> None:
        dep.building = ""
        dep.status = rules.after_build(dep.status, False)
        self._save(dep)
        keeps = f"; build {dep.live_build} keeps serving" if dep.live_build else ""
        self._log(dep, "error", f"build {build_id} failed: {error}{keeps}")
        self.events.emit("webops.failed", tenant=dep.tenant, subject=dep.name, build=build_id)

    async def _on_connected(self, machine_ids: list[str]) -> None:
        """Builds whose outcome never arrived (the agent or the coordinator restarted
        mid-build, or the link dropped) are sent again under the same id: the agent
        makes a build once (a repeat of the build it is making is answered by that
        build's outcome, a repeat of one it made gets its outcome again) and from
        scratch only without a good outcome of it (it died mid-build), so a repeat is
        harmless. An outcome of a build no longer in progress is ignored (`_on_built`).
        One read for a wave of sessions: the builds in progress, on any machine."""
        wave = set(machine_ids)
        for dep in await asyncio.to_thread(self.storage.webops_building):
            if dep.machine_id in wave:
                self._log(dep, "warning", f"build {dep.building} sent again (machine reconnected)")
                with contextlib.suppress(Unavailable):
                    await self._send(dep, self._build_message(dep))

    def _build_message(self, dep: WebDeployment) -> m.WebBuild:
        return m.WebBuild(
            name=dep.name,
            build_id=dep.building,
            repo_url=dep.repo_url,
            branch=dep.branch,
            project_type=dep.project_type,
            port=dep.port,
            domain=dep.domain,
            env=dep.env,
        )

    def _runtime_item(self, machine_id: str, log: m.WebLog) -> None:
        """What the running app wrote (the agent rate-limits it): an observation, written
        behind with the other reports; every `PRUNE_EVERY` items of a deployment, its
        log is cut to its newest `MAX_LOG_ITEMS`."""
        level = log.level if log.level in rules.LEVELS else "info"
        at = log.at or time.time()
        text = log.message[:MAX_LOG_MESSAGE]
        self.hub.buffer.add(
            functools.partial(
                self.storage.webops_runtime_log, machine_id, log.name, level, text, at
            )
        )
        key = (machine_id, log.name)
        self._runtime_count[key] = count = self._runtime_count.get(key, 0) + 1
        if count % PRUNE_EVERY == 0:
            self.hub.buffer.add(lambda: self._prune(machine_id, log.name))

    def _prune(self, machine_id: str, name: str) -> None:
        self.storage.webops_logs_prune(machine_id, name, MAX_LOG_ITEMS)

    async def _on_message(self, session: Session, message: m.Message) -> None:
        if isinstance(message, m.WebLog) and not message.build_id:
            self._runtime_item(session.machine_id, message)
            return
        if isinstance(message, m.WebLog | m.WebBuilt | m.WebHealth):
            dep = self._of(session.machine_id, message.name)
            if dep is None:
                return
            if isinstance(message, m.WebLog):
                if message.build_id != dep.building:
                    return
                level = message.level if message.level in rules.LEVELS else "info"
                self._log(dep, level, message.message[:MAX_LOG_MESSAGE], message.at)
            elif isinstance(message, m.WebBuilt):
                await self._on_built(dep, message)
            else:
                self._on_health(dep, message)

    def _of(self, machine_id: str, name: str) -> WebDeployment | None:
        for dep in self.storage.webops_on_machine(machine_id):
            if dep.name == name:
                return dep
        return None

    async def _on_built(self, dep: WebDeployment, built: m.WebBuilt) -> None:
        if built.build_id != dep.building:
            return
        dep.files = built.files[:500]
        dep.env_example = dict(list(built.env_example.items())[:200])
        if not built.ok:
            self._failed(dep, built.build_id, built.error or "build failed")
            return
        project_type = built.project_type or dep.project_type
        unit = rules.unit_name(dep.name, project_type)
        options = rules.unit_options(
            name=dep.name,
            build_id=built.build_id,
            project_type=project_type,
            exec_start=built.exec_start,
            workdir=built.workdir,
            image=built.image,
            env_file=built.env_file,
            port=dep.port,
        )
        if dep.unit and dep.unit != unit:
            await self.units.destroy(dep.unit, tenant=dep.tenant)
        try:
            await self.units.put(
                unit, options, "launched", machines=[dep.machine_id], tenant=dep.tenant
            )
        except (Invalid, Conflict, NotFound) as exc:
            self._failed(dep, built.build_id, f"unit refused: {exc}")
            return
        dep.project_type = project_type
        dep.unit = unit
        dep.live_build = built.build_id
        dep.building = ""
        dep.status = rules.after_build(dep.status, True)
        self._save(dep)
        self._log(dep, "success", f"build {built.build_id} succeeded; {unit} runs it")
        self.events.emit("webops.deployed", tenant=dep.tenant, subject=dep.name)

    def _on_health(self, dep: WebDeployment, h: m.WebHealth) -> None:
        old = self.health.get(dep.id, Health())
        since = old.healthy_since if old.is_healthy and h.healthy else 0.0
        if h.healthy and not since:
            since = h.at or time.time()
        at = h.at or time.time()
        self.health[dep.id] = Health(
            h.healthy,
            h.status,
            h.detail[:500],
            at,
            since,
            h.memory_bytes,
            h.cpu_ns,
            cpu_percent(old, h.cpu_ns, at),
        )

    # --- plumbing -----------------------------------------------------------------------

    def _save(self, dep: WebDeployment) -> None:
        dep.updated_at = time.time()
        self.storage.webops_update(dep)

    def _log(self, dep: WebDeployment, level: str, message: str, at: float = 0.0) -> None:
        self.storage.webops_log(dep.id, level, message, at or time.time())
