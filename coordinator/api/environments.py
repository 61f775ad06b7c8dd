"""Environment management (`spec/environment-management-api.md`, readings in
`environment-notes.md`), a thin adapter over `EnvironmentService`.

Bare bodies (objects, arrays, `{"deleted": true}`), camelCase fields, RFC 3339 UTC
times; errors in the `/api/` envelope with the WebOps codes (plus CONFLICT 409 and
UNPROCESSABLE_ENTITY 422). Families per prefix (`/api/v1/environments`, `/targets`,
`/target-groups`, `/promotions`) so the longest prefix wins over the task API's
`/api/v1`. Promotions are Moorage's design (docs/environments.md).
"""

from __future__ import annotations

import datetime
import json
from typing import Any

import msgspec
from aiohttp import web

from coordinator.api.errors import ApiError, decode_body, json_response
from coordinator.api.routing import Conventions, Family, RouteTable, domain_status, tenant_of
from coordinator.envs.model import Environment, FreezeWindow, Promotion, Target, TargetGroup
from coordinator.envs.service import Actor, EnvironmentService, Unprocessable
from coordinator.errors import DomainError
from coordinator.timefmt import iso
from coordinator.trust import permissions as perms
from coordinator.trust.auth import PRINCIPAL
from coordinator.trust.ratelimit import DEPLOY

V1 = "/api/v1"
ENVIRONMENTS = V1 + "/environments"
TARGETS = V1 + "/targets"
TARGET_GROUPS = V1 + "/target-groups"
PROMOTIONS = V1 + "/promotions"
BODY_MAX = 64 << 10


def status_of(exc: DomainError) -> int:
    return 422 if isinstance(exc, Unprocessable) else domain_status(exc)


CONVENTIONS = Conventions("environments", envelope=True, status_of=status_of)

UNSET = msgspec.UNSET
Unset = msgspec.UnsetType


# --- bodies -------------------------------------------------------------------------------


class EnvironmentIn(msgspec.Struct, frozen=True, rename="camel"):
    name: str
    display_name: str = ""
    order_index: int = 0
    config: dict[str, Any] = {}
    required_approvals: int = 0
    require_sod: bool | None = None
    require_separation_of_duties: bool | None = None
    promotion_policy: str = "default"
    auto_promote_from: str = ""
    is_production: bool | None = None


class EnvironmentPatch(msgspec.Struct, frozen=True, rename="camel"):
    name: str | Unset = UNSET
    display_name: str | Unset = UNSET
    order_index: int | Unset = UNSET
    config: dict[str, Any] | Unset = UNSET
    required_approvals: int | Unset = UNSET
    require_sod: bool | Unset = UNSET
    require_separation_of_duties: bool | Unset = UNSET
    promotion_policy: str | Unset = UNSET
    auto_promote_from: str | Unset = UNSET
    is_production: bool | Unset | None = UNSET


class FreezeWindowIn(msgspec.Struct, frozen=True, rename="camel"):
    start: str
    end: str
    reason: str = ""
    exceptions: list[str | int] = []


class TargetGroupIn(msgspec.Struct, frozen=True, rename="camel"):
    name: str
    description: str = ""
    labels: dict[str, str] = {}


class TargetGroupPatch(msgspec.Struct, frozen=True, rename="camel"):
    name: str | Unset = UNSET
    description: str | Unset = UNSET
    labels: dict[str, str] | Unset = UNSET


class TargetIn(msgspec.Struct, frozen=True, rename="camel"):
    environment_id: str
    name: str
    target_type: str
    target_group_id: str = ""
    connection: dict[str, Any] = {}
    labels: dict[str, str] = {}
    deployment_directory: str = ""
    machine_id: str = ""


class TargetPatch(msgspec.Struct, frozen=True, rename="camel"):
    environment_id: str | Unset = UNSET
    name: str | Unset = UNSET
    target_type: str | Unset = UNSET
    target_group_id: str | Unset = UNSET
    connection: dict[str, Any] | Unset = UNSET
    labels: dict[str, str] | Unset = UNSET
    deployment_directory: str | Unset = UNSET
    machine_id: str | Unset = UNSET


class PromotionIn(msgspec.Struct, frozen=True, rename="camel"):
    release_id: str = ""
    application_id: str = ""
    version: str = ""
    comment: str = ""


class DecisionIn(msgspec.Struct, frozen=True, rename="camel"):
    comment: str = ""


class Deleted(msgspec.Struct, frozen=True):
    deleted: bool


# --- conversions (pure) -------------------------------------------------------------------


def parse_time(value: str, field: str) -> float:
    """RFC 3339 (a zone is required) -> epoch seconds; ApiError 400 naming the field."""
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, f"{field}: not an RFC 3339 time: {value!r}") from None
    if moment.tzinfo is None:
        raise ApiError(400, f"{field}: needs a time zone (e.g. a trailing Z)")
    return moment.timestamp()


def changes_of(patch: msgspec.Struct, renames: dict[str, str] | None = None) -> dict[str, Any]:
    """The fields a partial body set, under the record's field names."""
    out: dict[str, Any] = {}
    for name in patch.__struct_fields__:
        value = getattr(patch, name)
        if value is not UNSET:
            out[(renames or {}).get(name, name)] = value
    return out


def environment_out(
    env: Environment, service: EnvironmentService, *, state: bool = False
) -> dict[str, Any]:
    windows = service.windows_of(env)
    out: dict[str, Any] = {
        "id": env.id,
        "tenantId": env.tenant,
        "name": env.name,
        "displayName": env.display_name or env.name,
        "orderIndex": env.order_index,
        "config": env.config,
        "freezeWindows": [window_out(w) for w in windows],
        "isProduction": service.is_production(env),
        "requiredApprovals": env.required_approvals,
        "requireSeparationOfDuties": env.require_sod,
        "promotionPolicy": env.promotion_policy,
        "autoPromoteFrom": env.auto_promote_from or None,
        "createdAt": iso(env.created_at),
        "updatedAt": iso(env.updated_at),
    }
    if state:
        current = service.current_release(env)
        out["currentRelease"] = (
            None
            if current is None
            else {
                "id": current.id,
                "name": current.name,
                "version": current.version,
                "deployedAt": iso(current.deployed_at),
            }
        )
    return out


def window_out(w: FreezeWindow) -> dict[str, Any]:
    return {
        "id": w.id,
        "environmentId": w.environment_id,
        "start": iso(w.start),
        "end": iso(w.end),
        "reason": w.reason,
        "exceptions": w.exceptions,
        "createdBy": w.created_by,
    }


def group_out(g: TargetGroup) -> dict[str, Any]:
    return {
        "id": g.id,
        "environmentId": g.environment_id,
        "name": g.name,
        "description": g.description,
        "labels": g.labels,
        "createdAt": iso(g.created_at),
        "updatedAt": iso(g.updated_at),
    }


def target_out(t: Target) -> dict[str, Any]:
    return {
        "id": t.id,
        "environmentId": t.environment_id,
        "targetGroupId": t.target_group_id or None,
        "name": t.name,
        "targetType": t.target_type,
        "connection": t.connection,
        "labels": t.labels,
        "deploymentDirectory": t.deployment_directory,
        "machineId": t.machine_id or None,
        "healthStatus": t.health_status,
        "lastHealthCheck": iso(t.last_health_check),
        "createdAt": iso(t.created_at),
        "updatedAt": iso(t.updated_at),
    }


def promotion_out(p: Promotion) -> dict[str, Any]:
    return {
        "id": p.id,
        "environmentId": p.environment_id,
        "applicationId": p.application_id,
        "version": p.version,
        "sourceReleaseId": p.source_release_id or None,
        "releaseId": p.release_id or None,
        "status": p.status,
        "requestedBy": p.requested_by,
        "requiredApprovals": p.required_approvals,
        "requireSeparationOfDuties": p.require_sod,
        "approvals": [
            {"by": a.by, "name": a.name, "at": iso(a.at), "comment": a.comment} for a in p.approvals
        ],
        "auto": p.auto,
        "freezeException": p.freeze_exception or None,
        "message": p.message,
        "comment": p.comment,
        "createdAt": iso(p.created_at),
        "updatedAt": iso(p.updated_at),
    }


def actor_of(request: web.Request) -> Actor:
    p = request[PRINCIPAL]
    if p.user_id is not None:
        return Actor(f"user:{p.user_id}", (str(p.user_id), p.name, p.label), p.name)
    return Actor(p.label, (p.name,), p.label)


def flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "").lower()
    if value not in ("", "true", "false", "1", "0"):
        raise ApiError(400, f"{name}: must be true or false")
    return value in ("true", "1")


# --- routes -------------------------------------------------------------------------------


def routes(service: EnvironmentService) -> list[Family]:
    r = RouteTable(permission=perms.ENVIRONMENTS)

    # environments
    @r.get(ENVIRONMENTS, "Environments by orderIndex", query=("includeState",), errors=(400,))
    async def list_environments(request: web.Request) -> web.Response:
        state = flag(request, "includeState")
        return json_response(
            [
                environment_out(e, service, state=state)
                for e in service.environments(tenant=tenant_of(request))
            ]
        )

    @r.post(
        ENVIRONMENTS,
        "Create an environment",
        request=EnvironmentIn,
        ok=201,
        errors=(400, 409, 415),
    )
    async def create_environment(request: web.Request) -> web.Response:
        body = await decode_body(request, EnvironmentIn, max_bytes=BODY_MAX)
        sod = body.require_separation_of_duties
        env = service.create_environment(
            Environment(
                id="",
                name=body.name,
                display_name=body.display_name,
                order_index=body.order_index,
                config=body.config,
                required_approvals=body.required_approvals,
                require_sod=bool(body.require_sod if sod is None else sod),
                promotion_policy=body.promotion_policy,
                auto_promote_from=body.auto_promote_from,
                is_production=body.is_production,
                tenant=tenant_of(request),
            )
        )
        return json_response(environment_out(env, service), 201)

    @r.get(ENVIRONMENTS + "/{id}", "One environment", query=("includeState",), errors=(404,))
    async def get_environment(request: web.Request) -> web.Response:
        env = service.environment(request.match_info["id"], tenant=tenant_of(request))
        return json_response(environment_out(env, service, state=flag(request, "includeState")))

    @r.put(
        ENVIRONMENTS + "/{id}",
        "Update an environment (partial)",
        request=EnvironmentPatch,
        errors=(400, 404, 409, 415),
    )
    async def update_environment(request: web.Request) -> web.Response:
        body = await decode_body(request, EnvironmentPatch, max_bytes=BODY_MAX)
        changes = changes_of(body, {"require_separation_of_duties": "require_sod"})
        env = service.update_environment(
            request.match_info["id"], changes, tenant=tenant_of(request)
        )
        return json_response(environment_out(env, service))

    @r.delete(
        ENVIRONMENTS + "/{id}",
        "Delete an environment (409 with targets or a promotion rolling out)",
        response=Deleted,
        errors=(404, 409),
    )
    async def delete_environment(request: web.Request) -> web.Response:
        await service.delete_environment(request.match_info["id"], tenant=tenant_of(request))
        return json_response(Deleted(True))

    # freeze windows
    @r.post(
        ENVIRONMENTS + "/{envId}/freeze-windows",
        "Create a freeze window",
        request=FreezeWindowIn,
        ok=201,
        errors=(400, 404, 415),
    )
    async def create_window(request: web.Request) -> web.Response:
        body = await decode_body(request, FreezeWindowIn, max_bytes=BODY_MAX)
        window = service.create_freeze_window(
            request.match_info["envId"],
            FreezeWindow(
                id="",
                environment_id="",
                start=parse_time(body.start, "start"),
                end=parse_time(body.end, "end"),
                reason=body.reason,
                exceptions=[str(e) for e in body.exceptions],
                created_by=actor_of(request).id,
            ),
            tenant=tenant_of(request),
        )
        return json_response(window_out(window), 201)

    @r.get(
        ENVIRONMENTS + "/{envId}/freeze-windows",
        "Freeze windows (active=true: in force now)",
        query=("active",),
        errors=(400, 404),
    )
    async def list_windows(request: web.Request) -> web.Response:
        windows = service.freeze_windows(
            request.match_info["envId"], active=flag(request, "active"), tenant=tenant_of(request)
        )
        return json_response([window_out(w) for w in windows])

    @r.delete(
        ENVIRONMENTS + "/{envId}/freeze-windows/{windowId}",
        "Delete a freeze window",
        response=Deleted,
        errors=(404,),
    )
    async def delete_window(request: web.Request) -> web.Response:
        service.delete_freeze_window(
            request.match_info["envId"], request.match_info["windowId"], tenant=tenant_of(request)
        )
        return json_response(Deleted(True))

    # target groups
    @r.post(
        ENVIRONMENTS + "/{envId}/target-groups",
        "Create a target group",
        request=TargetGroupIn,
        ok=201,
        errors=(400, 404, 409, 415),
    )
    async def create_group(request: web.Request) -> web.Response:
        body = await decode_body(request, TargetGroupIn, max_bytes=BODY_MAX)
        group = service.create_target_group(
            request.match_info["envId"],
            TargetGroup(
                id="",
                environment_id="",
                name=body.name,
                description=body.description,
                labels=body.labels,
            ),
            tenant=tenant_of(request),
        )
        return json_response(group_out(group), 201)

    @r.get(ENVIRONMENTS + "/{envId}/target-groups", "Target groups", errors=(404,))
    async def list_groups(request: web.Request) -> web.Response:
        found = service.target_groups(request.match_info["envId"], tenant=tenant_of(request))
        return json_response([group_out(g) for g in found])

    @r.get(TARGET_GROUPS + "/{id}", "One target group", errors=(404,))
    async def get_group(request: web.Request) -> web.Response:
        return json_response(
            group_out(service.target_group(request.match_info["id"], tenant=tenant_of(request)))
        )

    @r.put(
        TARGET_GROUPS + "/{id}",
        "Update a target group (partial)",
        request=TargetGroupPatch,
        errors=(400, 404, 409, 415),
    )
    async def update_group(request: web.Request) -> web.Response:
        body = await decode_body(request, TargetGroupPatch, max_bytes=BODY_MAX)
        group = service.update_target_group(
            request.match_info["id"], changes_of(body), tenant=tenant_of(request)
        )
        return json_response(group_out(group))

    @r.delete(
        TARGET_GROUPS + "/{id}",
        "Delete a target group (409 while targets are in it)",
        response=Deleted,
        errors=(404, 409),
    )
    async def delete_group(request: web.Request) -> web.Response:
        service.delete_target_group(request.match_info["id"], tenant=tenant_of(request))
        return json_response(Deleted(True))

    # targets
    @r.post(
        TARGETS,
        "Create a target (binds to the machine whose hostname or IP is connection.host)",
        request=TargetIn,
        ok=201,
        errors=(400, 404, 409, 415),
    )
    async def create_target(request: web.Request) -> web.Response:
        body = await decode_body(request, TargetIn, max_bytes=BODY_MAX)
        target = await service.create_target(
            Target(
                id="",
                environment_id=body.environment_id,
                name=body.name,
                target_type=body.target_type,
                target_group_id=body.target_group_id,
                connection=body.connection,
                labels=body.labels,
                deployment_directory=body.deployment_directory,
                machine_id=body.machine_id,
                explicit_machine=bool(body.machine_id),
            ),
            tenant=tenant_of(request),
        )
        return json_response(target_out(target), 201)

    @r.get(
        TARGETS,
        "Targets; filters: environmentId, targetType, labels (JSON object), healthStatus",
        query=("environmentId", "targetType", "labels", "healthStatus"),
        errors=(400, 404),
    )
    async def list_targets(request: web.Request) -> web.Response:
        q = request.query
        labels: dict[str, str] | None = None
        if "labels" in q:
            try:
                labels = msgspec.json.decode(q["labels"], type=dict[str, str])
            except (msgspec.DecodeError, msgspec.ValidationError, json.JSONDecodeError):
                raise ApiError(400, "labels: must be a JSON object of strings") from None
        found = service.targets(
            tenant=tenant_of(request),
            environment_id=q.get("environmentId") or None,
            target_type=q.get("targetType") or None,
            labels=labels,
            health_status=q.get("healthStatus") or None,
        )
        return json_response([target_out(t) for t in found])

    @r.get(TARGETS + "/{id}", "One target", errors=(404,))
    async def get_target(request: web.Request) -> web.Response:
        return json_response(
            target_out(service.target(request.match_info["id"], tenant=tenant_of(request)))
        )

    @r.put(
        TARGETS + "/{id}",
        "Update a target (partial)",
        request=TargetPatch,
        errors=(400, 404, 409, 415),
    )
    async def update_target(request: web.Request) -> web.Response:
        body = await decode_body(request, TargetPatch, max_bytes=BODY_MAX)
        changes = changes_of(body)
        if "machine_id" in changes:
            changes["explicit_machine"] = bool(changes["machine_id"])
        target = await service.update_target(
            request.match_info["id"], changes, tenant=tenant_of(request)
        )
        return json_response(target_out(target))

    @r.delete(TARGETS + "/{id}", "Delete a target", response=Deleted, errors=(404,))
    async def delete_target(request: web.Request) -> web.Response:
        await service.delete_target(request.match_info["id"], tenant=tenant_of(request))
        return json_response(Deleted(True))

    @r.post(
        TARGETS + "/{id}/health-check",
        "Ask the target's agent now (Docker daemon, systemd, the release's units)",
        errors=(404, 422),
    )
    async def health_check(request: web.Request) -> web.Response:
        target, message = await service.health_check(
            request.match_info["id"], tenant=tenant_of(request)
        )
        return json_response(
            {
                "status": target.health_status,
                "message": message,
                "checkedAt": iso(target.last_health_check),
            }
        )

    @r.get(
        TARGETS + "/{id}/sticker",
        "The version sticker the target's agent reported",
        errors=(404, 422),
    )
    async def sticker(request: web.Request) -> web.Response:
        out = service.sticker(request.match_info["id"], tenant=tenant_of(request))
        out["deployedAt"] = iso(out["deployedAt"])
        return json_response(out)

    @r.get(
        TARGETS + "/{id}/drift",
        "Drift as the target's agent reported it, against the environment's release",
        errors=(404, 422),
    )
    async def drift(request: web.Request) -> web.Response:
        out = service.drift(request.match_info["id"], tenant=tenant_of(request))
        out["checkedAt"] = iso(out["checkedAt"])
        return json_response(out)

    # promotions
    @r.post(
        ENVIRONMENTS + "/{envId}/promotions",
        "Request a promotion of a release into the environment (rolls out once approved)",
        request=PromotionIn,
        ok=201,
        errors=(400, 403, 404, 409, 415, 422, 429, 503),
        permission=perms.DEPLOYMENTS,
        limit=DEPLOY,
    )
    async def request_promotion(request: web.Request) -> web.Response:
        body = await decode_body(request, PromotionIn, max_bytes=BODY_MAX)
        p = await service.request_promotion(
            request.match_info["envId"],
            actor_of(request),
            release_id=body.release_id,
            application_id=body.application_id,
            version=body.version,
            comment=body.comment,
            tenant=tenant_of(request),
        )
        return json_response(promotion_out(p), 201)

    @r.get(
        ENVIRONMENTS + "/{envId}/promotions",
        "The environment's promotions, newest first",
        errors=(404,),
    )
    async def env_promotions(request: web.Request) -> web.Response:
        found = service.promotions(tenant=tenant_of(request), env_id=request.match_info["envId"])
        return json_response([promotion_out(p) for p in found])

    @r.get(PROMOTIONS, "Promotions, newest first")
    async def list_promotions(request: web.Request) -> web.Response:
        found = service.promotions(tenant=tenant_of(request))
        return json_response([promotion_out(p) for p in found])

    @r.get(PROMOTIONS + "/{id}", "One promotion", errors=(404,))
    async def get_promotion(request: web.Request) -> web.Response:
        return json_response(
            promotion_out(service.promotion(request.match_info["id"], tenant=tenant_of(request)))
        )

    async def decision(request: web.Request) -> DecisionIn:
        if not request.can_read_body:
            return DecisionIn()
        return await decode_body(request, DecisionIn, max_bytes=BODY_MAX)

    @r.post(
        PROMOTIONS + "/{id}/approve",
        "Approve (separation of duties: not the requester nor the release's builder);"
        " the last approval needed starts the rollout",
        request=DecisionIn,
        errors=(403, 404, 409, 415, 429, 503),
        permission=perms.APPROVALS,
        limit=DEPLOY,
    )
    async def approve(request: web.Request) -> web.Response:
        body = await decision(request)
        p = await service.approve(
            request.match_info["id"],
            actor_of(request),
            comment=body.comment,
            tenant=tenant_of(request),
        )
        return json_response(promotion_out(p))

    @r.post(
        PROMOTIONS + "/{id}/reject",
        "Reject a promotion awaiting approval",
        request=DecisionIn,
        errors=(403, 404, 409, 415),
        permission=perms.APPROVALS,
    )
    async def reject(request: web.Request) -> web.Response:
        body = await decision(request)
        p = service.reject(
            request.match_info["id"],
            actor_of(request),
            comment=body.comment,
            tenant=tenant_of(request),
        )
        return json_response(promotion_out(p))

    out = []
    for prefix in (ENVIRONMENTS, TARGETS, TARGET_GROUPS, PROMOTIONS):
        mine = [
            route
            for route in r.routes
            if route.path == prefix or route.path.startswith(prefix + "/")
        ]
        out.append(Family(prefix, CONVENTIONS, mine))
    return out
