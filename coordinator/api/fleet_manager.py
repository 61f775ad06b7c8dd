"""`/api/v2`: the GitOps Fleet Manager API, a thin adapter over `DeploymentService`.

Shapes follow `spec/fleet-manager-notes.md` to the field: lists are
`{"items", "next"}` with `next` the absolute URL of the next page (keyset cursors, so
a page never skips or repeats an object created meanwhile), `limit` defaults to 50 and
is capped at 200; releases and jobs are plain arrays, oldest first. Creates are safe to
retry: repeating one returns the object already made instead of a second one.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from coordinator import timefmt
from coordinator.api.errors import ApiError, decode_body, json_response
from coordinator.api.routing import ENVELOPE, Family, RouteTable, tenant_of
from coordinator.deploy.deployments import DeploymentService
from coordinator.deploy.groups import members
from coordinator.deploy.manifest import DEPLOYABLE_TYPE, Metadata
from coordinator.fleet.machines import Cluster, MachineService, cluster_health
from coordinator.models import (
    Application,
    Deployment,
    Machine,
    MachineGroup,
    Release,
    ReleaseJob,
)
from coordinator.trust import permissions as perms

__all__ = ["PREFIX", "cluster_health", "keyset_page", "routes", "same_shape"]

PREFIX = "/api/v2"
DEFAULT_LIMIT = 50
MAX_LIMIT = 200
LIST = ("limit", "cursor")
T = TypeVar("T")


def iso(ts: float) -> str | None:
    return timefmt.iso(ts, "milliseconds")


# --- bodies -----------------------------------------------------------------------------


class ApplicationBody(msgspec.Struct, frozen=True, rename="camel"):
    name: str | None = None
    source_config: str | None = None
    version: str = ""
    source_type: str | None = None
    description: str | None = None


class ApplicationRef(msgspec.Struct, frozen=True, rename="camel"):
    id: str = ""
    name: str = ""
    version: str = ""
    strategy: str = "manual"


class DeploymentBody(msgspec.Struct, frozen=True, rename="camel"):
    name: str | None = None
    application_id: str | None = None
    target_group: str | None = None
    cluster_group_id: str | None = None
    application_version: str | None = None
    applications: list[ApplicationRef] = []


class GroupBody(msgspec.Struct, frozen=True, rename="camel"):
    name: str | None = None
    description: str | None = None
    selector: dict[str, str] | None = None
    cluster_ids: list[str] | None = None


# --- objects ----------------------------------------------------------------------------


class LabelOut(msgspec.Struct, frozen=True):
    key: str
    value: str


class MetadataOut(msgspec.Struct, frozen=True, rename="camel"):
    """The manifest envelope's metadata (empty for a bare manifest): kept and shown."""

    name: str
    description: str
    cluster_groups: list[str]
    labels: list[LabelOut]
    annotations: dict[str, str]
    lifecycle: str


class ApplicationOut(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    name: str
    version: str
    versions: list[str]
    source_config: str
    source_type: str
    description: str
    created_at: str | None
    updated_at: str | None
    type: str
    """Application: the one deployable type."""
    form: str
    """envelope (version/type/metadata/spec) or bare (units at the top)."""
    metadata: MetadataOut
    units: list[str]
    """The latest version's unit names (spec.containers[] become NAME.container)."""


class DeploymentOut(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    name: str
    application_id: str
    applications: list[str]
    cluster_group_id: str
    target_group: str
    application_version: str
    status: str
    current_release_id: str | None
    created_at: str | None
    updated_at: str | None


class ReleaseUnitOut(msgspec.Struct, frozen=True, rename="camel", omit_defaults=True):
    name: str
    hash: str
    sha256: str
    image: str | None = None
    image_digest: str | None = None


class Progress(msgspec.Struct, frozen=True):
    total: int
    pending: int
    running: int
    succeeded: int
    failed: int


class ReleaseOut(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    deployment_id: str
    sequence: int
    application_id: str
    application_version: str
    status: str
    message: str
    batch: int
    batches: int
    batch_size: int
    rolled_back: bool
    previous_release_id: str | None
    units: list[ReleaseUnitOut]
    progress: Progress
    created_at: str | None
    updated_at: str | None
    finished_at: str | None


class JobOut(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    release_id: str
    cluster_id: str
    cluster_name: str
    batch: int
    status: str
    message: str
    started_at: str | None
    finished_at: str | None


class ClusterOut(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    name: str
    hostname: str
    ip: str
    health: str
    """healthy (connected, can run units, no drift) | drifted | unhealthy (connected but
    can run nothing: neither systemd nor Docker reachable) | unreachable (disconnected)
    | offline (lost)"""
    health_reason: str
    """Why the machine is not healthy ("" when it is)."""
    state: str
    metadata: dict[str, str]
    capabilities: list[str]
    agent_version: str
    last_seen: str | None
    drift: int
    deployments: dict[str, str]
    """deployment -> release its sticker says the machine runs."""


class GroupOut(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    name: str
    description: str
    builtin: bool
    selector: dict[str, str]
    cluster_ids: list[str]
    members: list[str]
    created_at: str | None
    updated_at: str | None


class Page(msgspec.Struct, frozen=True):
    items: list[Any]
    next: str | None


CREATED_HEADER = "Moorage-Created"
"""A retried create answers 201 with the object already made (GitOps clients expect
201); this header says whether this request made it (true) or found it (false)."""


def created(response: web.Response, made: bool) -> web.Response:
    response.headers[CREATED_HEADER] = "true" if made else "false"
    return response


# --- paging -----------------------------------------------------------------------------


def parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"limit must be a whole number, got {raw!r}") from None
    if value < 1:
        raise ApiError(400, f"limit must be at least 1, got {value}")
    return min(value, MAX_LIMIT)


def encode_cursor(key: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> list[Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise ApiError(400, f"cursor {raw!r} is not one this server issued") from None
    if not isinstance(key, list):
        raise ApiError(400, f"cursor {raw!r} is not one this server issued")
    return key


def same_shape(cursor: Sequence[Any], key: Sequence[Any]) -> bool:
    """A cursor can be compared with this list's keys: as long, each part of the same
    kind (numbers with numbers, strings with strings). Pure."""

    def kind(value: Any) -> str:
        if isinstance(value, bool) or value is None:
            return "other"
        return "number" if isinstance(value, int | float) else type(value).__name__

    return len(cursor) == len(key) and all(
        kind(c) == kind(k) and kind(c) != "other" for c, k in zip(cursor, key, strict=True)
    )


def keyset_page(
    items: Sequence[T], key: Callable[[T], Sequence[Any]], limit: int, cursor: list[Any] | None
) -> tuple[list[T], list[Any] | None]:
    """Items after `cursor` in key order, at most `limit`, and the cursor of the next
    page (None on the last). Pure."""
    ordered = sorted(items, key=lambda i: list(key(i)))
    if cursor is not None:
        ordered = [i for i in ordered if list(key(i)) > cursor]
    page = ordered[:limit]
    more = len(ordered) > limit
    return page, (list(key(page[-1])) if more and page else None)


def paged(
    request: web.Request,
    items: Sequence[T],
    key: Callable[[T], Sequence[Any]],
    out: Callable[[T], Any],
) -> web.Response:
    limit = parse_limit(request.query.get("limit"))
    raw = request.query.get("cursor")
    cursor = decode_cursor(raw) if raw else None
    if cursor is not None and items and not same_shape(cursor, key(items[0])):
        raise ApiError(400, f"cursor {raw!r} is not one this server issued")
    page, nxt = keyset_page(items, key, limit, cursor)
    next_url = None
    if nxt is not None:
        next_url = str(
            request.url.update_query({"limit": str(limit), "cursor": encode_cursor(nxt)})
        )
    return json_response(Page([out(i) for i in page], next_url))


# --- the adapter --------------------------------------------------------------------------


def routes(service: DeploymentService, machines: MachineService) -> Family:
    r = RouteTable(permission=perms.DEPLOYMENTS)

    def app_out(app: Application) -> ApplicationOut:
        manifest = service.manifest(app)
        meta = manifest.metadata or Metadata()
        return ApplicationOut(
            id=app.id,
            name=app.name,
            version=app.version,
            versions=service.version_labels(app.id),
            source_config=app.source_config,
            source_type=app.source_type,
            description=app.description,
            created_at=iso(app.created_at),
            updated_at=iso(app.updated_at),
            type=DEPLOYABLE_TYPE,
            form="bare" if manifest.metadata is None else "envelope",
            metadata=MetadataOut(
                name=meta.name,
                description=meta.description,
                cluster_groups=meta.cluster_groups,
                labels=[LabelOut(label.key, label.value) for label in meta.labels],
                annotations=meta.annotations,
                lifecycle=meta.lifecycle,
            ),
            units=[u.name for u in manifest.units],
        )

    def deployment_out(d: Deployment) -> DeploymentOut:
        return DeploymentOut(
            id=d.id,
            name=d.name,
            application_id=d.application_id,
            applications=[d.application_id],
            cluster_group_id=d.group_id,
            target_group=d.group_id,
            application_version=d.application_version,
            status=d.status,
            current_release_id=d.current_release or None,
            created_at=iso(d.created_at),
            updated_at=iso(d.updated_at),
        )

    def release_out(rel: Release) -> ReleaseOut:
        jobs = service.release_jobs(rel)
        count = Counter(j.status for j in jobs)
        return ReleaseOut(
            id=rel.id,
            deployment_id=rel.deployment_id,
            sequence=rel.seq,
            application_id=rel.application_id,
            application_version=rel.version,
            status=rel.status,
            message=rel.message,
            batch=rel.batch + 1 if rel.batches else 0,
            batches=rel.batches,
            batch_size=rel.batch_size,
            rolled_back=rel.rolled_back,
            previous_release_id=rel.previous_release or None,
            units=[
                ReleaseUnitOut(u.name, u.hash, u.sha256, u.image or None, u.image_digest or None)
                for u in rel.units
            ],
            progress=Progress(
                total=len(jobs),
                pending=count["Created"],
                running=count["Running"],
                succeeded=count["Success"],
                failed=count["Failed"],
            ),
            created_at=iso(rel.created_at),
            updated_at=iso(rel.updated_at),
            finished_at=iso(rel.finished_at),
        )

    def job_out(job: ReleaseJob, names: dict[str, str]) -> JobOut:
        return JobOut(
            id=job.id,
            release_id=job.release_id,
            cluster_id=job.machine_id,
            cluster_name=names.get(job.machine_id, job.machine_id),
            batch=job.batch + 1,
            status=job.status,
            message=job.message,
            started_at=iso(job.started_at),
            finished_at=iso(job.finished_at),
        )

    def group_out(group: MachineGroup, machines: list[Machine]) -> GroupOut:
        return GroupOut(
            id=group.id,
            name=group.name,
            description=group.description,
            builtin=group.builtin,
            selector=group.selector,
            cluster_ids=group.machines,
            members=[mach.id for mach in members(group, machines)],
            created_at=iso(group.created_at),
            updated_at=iso(group.updated_at),
        )

    def cluster_out(c: Cluster) -> ClusterOut:
        mach = c.machine
        return ClusterOut(
            id=mach.id,
            name=mach.hostname or mach.id,
            hostname=mach.hostname,
            ip=mach.primary_ip,
            health=c.health,
            health_reason=c.health_reason,
            state="connected" if c.connected else mach.state,
            metadata=mach.metadata,
            capabilities=mach.capabilities,
            agent_version=mach.agent_version,
            last_seen=iso(mach.last_seen),
            drift=c.drift,
            deployments=c.deployments,
        )

    # -- clusters (machines) and cluster groups

    @r.get(PREFIX + "/clusters", "Machines with health", response=Page, errors=(400,), query=LIST)
    async def list_clusters(request: web.Request) -> web.Response:
        return paged(
            request,
            machines.clusters(tenant=tenant_of(request)),
            lambda c: (c.machine.id,),
            cluster_out,
        )

    @r.get(PREFIX + "/clusters/{id}", "One machine", response=ClusterOut, errors=(404,))
    async def get_cluster(request: web.Request) -> web.Response:
        return json_response(
            cluster_out(machines.cluster(request.match_info["id"], tenant=tenant_of(request)))
        )

    @r.get(PREFIX + "/cluster-groups", "Machine groups", response=Page, errors=(400,), query=LIST)
    async def list_groups(request: web.Request) -> web.Response:
        present = service.machines(tenant=tenant_of(request))
        return paged(
            request,
            service.groups(tenant=tenant_of(request)),
            lambda g: (0 if g.builtin else 1, g.created_at, g.id),
            lambda g: group_out(g, present),
        )

    @r.post(
        PREFIX + "/cluster-groups",
        "Create a machine group (by metadata selector and/or machine ids)",
        request=GroupBody,
        response=GroupOut,
        ok=201,
        errors=(400, 409, 415),
    )
    async def create_group(request: web.Request) -> web.Response:
        body = await decode_body(request, GroupBody)
        if not body.name:
            raise ApiError(400, "name: required")
        group, made = service.create_group(
            body.name,
            description=body.description or "",
            selector=body.selector,
            machines=body.cluster_ids,
            tenant=tenant_of(request),
        )
        return created(
            json_response(
                group_out(group, service.machines(tenant=tenant_of(request))), status=201
            ),
            made,
        )

    @r.get(PREFIX + "/cluster-groups/{id}", "One machine group", response=GroupOut, errors=(404,))
    async def get_group(request: web.Request) -> web.Response:
        group = service.group(request.match_info["id"], tenant=tenant_of(request))
        return json_response(group_out(group, service.machines(tenant=tenant_of(request))))

    @r.put(
        PREFIX + "/cluster-groups/{id}",
        "Change a machine group",
        request=GroupBody,
        response=GroupOut,
        errors=(400, 404, 409, 415),
    )
    async def update_group(request: web.Request) -> web.Response:
        body = await decode_body(request, GroupBody)
        group = await service.update_group(
            request.match_info["id"],
            name=body.name,
            description=body.description,
            selector=body.selector,
            machines=body.cluster_ids,
            tenant=tenant_of(request),
        )
        return json_response(group_out(group, service.machines(tenant=tenant_of(request))))

    @r.delete(
        PREFIX + "/cluster-groups/{id}", "Delete a machine group", ok=204, errors=(400, 404, 409)
    )
    async def delete_group(request: web.Request) -> web.Response:
        service.delete_group(request.match_info["id"], tenant=tenant_of(request))
        return web.Response(status=204)

    # -- applications

    @r.get(
        PREFIX + "/deployment-applications",
        "Applications (latest version each)",
        response=Page,
        errors=(400,),
        query=LIST,
    )
    async def list_apps(request: web.Request) -> web.Response:
        return paged(
            request,
            service.applications(tenant=tenant_of(request)),
            lambda a: (a.created_at, a.id),
            app_out,
        )

    @r.post(
        PREFIX + "/deployment-applications",
        "Create an application from its manifest (a retry returns the same object)",
        request=ApplicationBody,
        response=ApplicationOut,
        ok=201,
        errors=(400, 409, 415),
    )
    async def create_app(request: web.Request) -> web.Response:
        body = await decode_body(request, ApplicationBody, max_bytes=8 << 20)
        if body.source_config is None:
            raise ApiError(400, "sourceConfig: required (the application's YAML manifest)")
        app, made = await service.create_application(
            body.name or "",
            body.source_config,
            description=body.description or "",
            source_type=body.source_type or "",
            version=body.version,
            tenant=tenant_of(request),
        )
        return created(json_response(app_out(app), status=201), made)

    @r.get(
        PREFIX + "/deployment-applications/{id}",
        "One application with its sourceConfig",
        response=ApplicationOut,
        errors=(404,),
    )
    async def get_app(request: web.Request) -> web.Response:
        return json_response(
            app_out(service.application(request.match_info["id"], tenant=tenant_of(request)))
        )

    @r.put(
        PREFIX + "/deployment-applications/{id}",
        "Update an application; a changed manifest is a new version",
        request=ApplicationBody,
        response=ApplicationOut,
        errors=(400, 404, 409, 415),
    )
    async def update_app(request: web.Request) -> web.Response:
        body = await decode_body(request, ApplicationBody, max_bytes=8 << 20)
        app = await service.update_application(
            request.match_info["id"],
            source_config=body.source_config,
            name=body.name,
            description=body.description,
            source_type=body.source_type,
            version=body.version,
            tenant=tenant_of(request),
        )
        return json_response(app_out(app))

    @r.delete(
        PREFIX + "/deployment-applications/{id}",
        "Delete an application (409 while a deployment uses it)",
        ok=204,
        errors=(404, 409),
    )
    async def delete_app(request: web.Request) -> web.Response:
        service.delete_application(request.match_info["id"], tenant=tenant_of(request))
        return web.Response(status=204)

    # -- deployments

    def deployment_fields(body: DeploymentBody) -> tuple[str | None, str | None, str | None]:
        first = body.applications[0] if body.applications else ApplicationRef()
        app_id = body.application_id or first.id or first.name or None
        group = body.cluster_group_id or body.target_group
        version = body.application_version
        if version is None and first.version:
            version = first.version
        return app_id, group, version

    @r.get(PREFIX + "/deployments", "Deployments", response=Page, errors=(400,), query=LIST)
    async def list_deployments(request: web.Request) -> web.Response:
        return paged(
            request,
            service.deployments(tenant=tenant_of(request)),
            lambda d: (d.created_at, d.id),
            deployment_out,
        )

    @r.post(
        PREFIX + "/deployments",
        "Bind an application to a cluster group",
        request=DeploymentBody,
        response=DeploymentOut,
        ok=201,
        errors=(400, 409, 415),
    )
    async def create_deployment(request: web.Request) -> web.Response:
        body = await decode_body(request, DeploymentBody)
        app_id, group, version = deployment_fields(body)
        if not app_id:
            raise ApiError(400, "applicationId: required (or applications[0].id)")
        if not group:
            raise ApiError(400, "clusterGroupId: required (or targetGroup)")
        d, made = service.create_deployment(
            body.name or "",
            app_id,
            group,
            application_version=version or "",
            tenant=tenant_of(request),
        )
        return created(json_response(deployment_out(d), status=201), made)

    @r.get(PREFIX + "/deployments/{id}", "One deployment", response=DeploymentOut, errors=(404,))
    async def get_deployment(request: web.Request) -> web.Response:
        return json_response(
            deployment_out(service.deployment(request.match_info["id"], tenant=tenant_of(request)))
        )

    @r.put(
        PREFIX + "/deployments/{id}",
        "Change a deployment (takes effect at the next deploy)",
        request=DeploymentBody,
        response=DeploymentOut,
        errors=(400, 404, 409, 415),
    )
    async def update_deployment(request: web.Request) -> web.Response:
        body = await decode_body(request, DeploymentBody)
        app_id, group, version = deployment_fields(body)
        d = service.update_deployment(
            request.match_info["id"],
            name=body.name,
            application_id=app_id,
            group_id=group,
            application_version=version,
            tenant=tenant_of(request),
        )
        return json_response(deployment_out(d))

    @r.delete(
        PREFIX + "/deployments/{id}",
        "Delete a deployment and its units (409 while a release runs)",
        ok=204,
        errors=(404, 409),
    )
    async def delete_deployment(request: web.Request) -> web.Response:
        await service.delete_deployment(request.match_info["id"], tenant=tenant_of(request))
        return web.Response(status=204)

    @r.post(
        PREFIX + "/deployments/{id}/deploy",
        "Cut a release and start its rollout (409 while one runs)",
        response=ReleaseOut,
        ok=201,
        errors=(400, 404, 409, 429, 503),
        limit="deploy",
    )
    async def deploy(request: web.Request) -> web.Response:
        release = await service.deploy(request.match_info["id"], tenant=tenant_of(request))
        return json_response(release_out(release), status=201)

    @r.get(
        PREFIX + "/deployments/{id}/releases",
        "The deployment's releases, oldest first",
        response=list[ReleaseOut],
        errors=(404,),
        query=("limit",),
    )
    async def list_releases(request: web.Request) -> web.Response:
        releases = service.releases(request.match_info["id"], tenant=tenant_of(request))
        if "limit" in request.query:
            releases = releases[-parse_limit(request.query["limit"]) :]
        return json_response([release_out(rel) for rel in releases])

    @r.get(
        PREFIX + "/deployment-releases/{id}",
        "One release with its progress",
        response=ReleaseOut,
        errors=(404,),
    )
    async def get_release(request: web.Request) -> web.Response:
        return json_response(
            release_out(service.release(request.match_info["id"], tenant=tenant_of(request)))
        )

    @r.get(
        PREFIX + "/deployment-releases/{id}/jobs",
        "Each machine's part of a release",
        response=list[JobOut],
        errors=(404,),
        query=("limit",),
    )
    async def list_jobs(request: web.Request) -> web.Response:
        jobs = service.jobs(request.match_info["id"], tenant=tenant_of(request))
        if "limit" in request.query:
            jobs = jobs[: parse_limit(request.query["limit"])]
        names = machines.names(tenant=tenant_of(request))
        return json_response([job_out(j, names) for j in jobs])

    return Family(PREFIX, ENVELOPE, r.routes)
