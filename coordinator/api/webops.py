"""WebOps deployments over HTTP: two thin surfaces over `WebOpsService`.

- `/api/v1/deployments/...`: the documented API (`spec/webops-api.md`): by id, in the
  `{success, data, message, pagination}` envelope.
- `/api/status/`, `/api/deployments/...`, `/api/databases/...`: what the WebOps
  command-line client speaks (`spec/webops-notes.md`): by name, trailing slashes, no
  envelope, errors `{"error": "<text>", "message"}`.

Creates and redeploys count against the `deploy` rate class (10/hour per user by
default); every route needs the `deployments` permission but `/api/status/`.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import os
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec
from aiohttp import web

from coordinator.api.errors import ApiError, decode_body, json_response
from coordinator.api.identity import Envelope, Pagination, ok, page_args
from coordinator.api.routing import ENVELOPE, WEBOPS_CLI, Family, RouteTable, tenant_of
from coordinator.timefmt import iso
from coordinator.trust import permissions as perms
from coordinator.trust.auth import PRINCIPAL
from coordinator.webops import export, rules
from coordinator.webops.records import BulkJob, WebDeployment, WebLogItem, WebQuery
from coordinator.webops.service import (
    BulkRequest,
    CreateRequest,
    EnvKey,
    EnvValue,
    EnvVars,
    WebOpsService,
)
from proto import webops as w

V1 = "/api/v1/deployments"
CLI = "/api/deployments"
STATUS = "/api/status"
VERSION = "2.0-moorage"
MAX_LINES = 10000
FOLLOW_MAX_S = 3600.0
"""A follow stream ends after an hour (clients reconnect); it ends sooner when the
client goes away or the deployment is deleted."""


# --- bodies -------------------------------------------------------------------------------


class EnvSet(msgspec.Struct, frozen=True):
    key: EnvKey
    value: EnvValue
    restart: bool = False


class EnvUnset(msgspec.Struct, frozen=True):
    key: EnvKey
    restart: bool = False


class EnvGenerate(msgspec.Struct, frozen=True):
    debug: bool = False
    domain: (
        Annotated[str, msgspec.Meta(max_length=253, pattern=w.OPTIONAL_DOMAIN_PATTERN)] | None
    ) = None
    custom_vars: EnvVars = {}
    save: bool = True


class UpdateBody(msgspec.Struct, frozen=True):
    branch: Annotated[str, msgspec.Meta(pattern=w.BRANCH_PATTERN)] | None = None
    domain: (
        Annotated[str, msgspec.Meta(max_length=253, pattern=w.OPTIONAL_DOMAIN_PATTERN)] | None
    ) = None
    env_vars: EnvVars | None = None


class EnvPut(msgspec.Struct, frozen=True):
    env_vars: EnvVars
    restart: bool = False


# --- shapes -------------------------------------------------------------------------------


def item(dep: WebDeployment) -> dict[str, Any]:
    return {
        "id": dep.id,
        "name": dep.name,
        "status": dep.status,
        "project_type": dep.project_type,
        "repo_url": dep.repo_url,
        "branch": dep.branch,
        "domain": dep.domain,
        "port": dep.port,
        "created_at": iso(dep.created_at),
        "updated_at": iso(dep.updated_at),
    }


def details(service: WebOpsService, dep: WebDeployment) -> dict[str, Any]:
    h = service.health_of(dep)
    now = time.time()
    out = item(dep)
    out.update(
        {
            "machine": dep.machine_id,
            "unit": dep.unit,
            "live_build": dep.live_build,
            "building": dep.building,
            "ssl_enabled": False,
            "deployed_by": {"username": dep.created_by},
            "env_vars": dict(dep.env),
            "metrics": {
                "cpu_usage": h.cpu_percent,
                "memory_usage": round(h.memory_bytes / (1 << 20), 1),
                "memory_bytes": h.memory_bytes,
            },
            "health": {
                "is_healthy": h.is_healthy,
                "uptime_seconds": int(now - h.healthy_since) if h.healthy_since else 0,
                "last_check": iso(h.last_check),
                "checks": {"http_response": h.is_healthy},
                "detail": h.detail,
            },
        }
    )
    return out


def job_out(job: BulkJob) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "action": job.action,
        "status": job.status,
        "total": job.total,
        "done": len(job.results),
        "succeeded": sum(1 for res in job.results if res.success),
        "results": [msgspec.to_builtins(res) for res in job.results],
        "created_at": iso(job.created_at),
        "finished_at": iso(job.finished_at),
    }


def log_out(i: WebLogItem) -> dict[str, Any]:
    return {"id": i.id, "level": i.level, "message": i.message, "created_at": iso(i.created_at)}


def actor(request: web.Request) -> str:
    p = request[PRINCIPAL]
    return str(p.name)


def query_of(request: web.Request) -> WebQuery:
    page, per_page = page_args(request)
    return WebQuery(
        status=request.query.get("status", ""),
        project_type=request.query.get("project_type", ""),
        search=request.query.get("search", "")[:200],
        offset=(page - 1) * per_page,
        limit=per_page,
    )


def int_arg(request: web.Request, key: str, top: int = MAX_LINES) -> int | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or int(raw) > top:
        raise ApiError(400, f"{key} must be an integer between 0 and {top}")
    return int(raw)


def since_arg(request: web.Request) -> float:
    raw = request.query.get("since", "")
    if not raw:
        return 0.0
    try:
        return float(raw)  # seconds since the epoch, as /moorage/v1/audit takes it
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"since must be an ISO 8601 date or time, got {raw!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


async def optional_body(request: web.Request, kind: type[Any]) -> Any:
    if not request.can_read_body:
        return msgspec.convert({}, kind)
    raw = await request.read()
    if not raw.strip():
        return msgspec.convert({}, kind)
    return await decode_body(request, kind, max_bytes=1 << 16)


def env_check(service: WebOpsService, dep: WebDeployment) -> dict[str, Any]:
    missing = rules.missing_env(dep.env_example, dep.env)
    return {"valid": not missing, "missing": missing, "required": sorted(dep.env_example)}


def project_check(dep: WebDeployment) -> dict[str, Any]:
    if not dep.files:
        results = [
            {
                "passed": False,
                "message": "repository not fetched yet",
                "level": "warning",
                "details": "",
            }
        ]
    else:
        results = [
            {"passed": p, "message": msg, "level": lvl, "details": dep.project_type}
            for p, lvl, msg in w.project_checks(dep.project_type, dep.files)
        ]
    return {"all_passed": all(r["passed"] for r in results), "results": results}


# --- /api/v1/deployments ------------------------------------------------------------------


def v1_routes(service: WebOpsService) -> Family:
    r = RouteTable(permission=perms.DEPLOYMENTS)

    def dep_of(request: web.Request) -> WebDeployment:
        raw = request.match_info["id"]
        if not raw.isdigit() or len(raw) > 18:
            raise ApiError(404, f"deployment {raw!r} does not exist")
        return service.get_id(tenant_of(request), int(raw))

    # Before `/{id}/`: aiohttp matches in registration order.
    @r.post(
        V1 + "/bulk/",
        "Run restart, stop, start, redeploy or delete on many deployments, a result each"
        " (async: answered 202 with a job to poll)",
        request=BulkRequest,
        response=Envelope,
        errors=(202, 400, 415, 429),
        limit="deploy",
    )
    async def bulk(request: web.Request) -> web.Response:
        body = await decode_body(request, BulkRequest, max_bytes=1 << 16)
        job = await service.bulk(tenant_of(request), body)
        if body.run_async:
            return ok(job_out(job), "Bulk action queued", 202)
        failed = sum(1 for res in job.results if not res.success)
        return ok(job_out(job), f"{job.total - failed} of {job.total} succeeded")

    @r.get(
        V1 + "/bulk/{id}/", "A bulk job and its results so far", response=Envelope, errors=(404,)
    )
    async def bulk_job(request: web.Request) -> web.Response:
        return ok(job_out(service.job(tenant_of(request), request.match_info["id"])))

    @r.get(
        V1 + "/export/",
        "Every deployment as JSON or CSV, streamed (no env vars; CSV cells that would"
        " start a formula are prefixed with ')",
        errors=(400,),
        query=("format",),
    )
    async def export_(request: web.Request) -> web.StreamResponse:
        fmt = request.query.get("format", "json")
        if fmt not in export.FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(export.FORMATS)}, got {fmt!r}")
        tenant = tenant_of(request)
        kind = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
        resp = web.StreamResponse(
            headers={
                "Content-Type": kind,
                "Content-Disposition": f'attachment; filename="deployments.{fmt}"',
            }
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(export.csv_header() if fmt == "csv" else b"[")
        first = True
        for page in service.export_pages(tenant, export.PAGE):
            if fmt == "csv":
                await resp.write(export.csv_page(page))
            else:
                await resp.write(export.json_page(page, first))
            first = False
        if fmt == "json":
            await resp.write(b"]")
        await resp.write_eof()
        return resp

    @r.get(
        V1 + "/",
        "Deployments, newest first (status, project_type, search, page, per_page)",
        response=Envelope,
        errors=(400,),
        query=("status", "project_type", "search", "page", "per_page"),
    )
    async def list_(request: web.Request) -> web.Response:
        q = query_of(request)
        found, total = service.list_deployments(tenant_of(request), q)
        page = q.offset // q.limit + 1
        pag = Pagination(page, q.limit, total, max(1, math.ceil(total / q.limit)))
        return ok([item(d) for d in found], pagination=pag)

    @r.post(
        V1 + "/",
        "Create a deployment from a git repository (idempotent by name)",
        request=CreateRequest,
        response=Envelope,
        ok=201,
        errors=(400, 404, 409, 415, 429, 503),
        limit="deploy",
    )
    async def create(request: web.Request) -> web.Response:
        body = await decode_body(request, CreateRequest, max_bytes=1 << 20)
        dep, made = await service.create(tenant_of(request), body, actor=actor(request))
        data = {"id": dep.id, "name": dep.name, "status": dep.status, "port": dep.port}
        msg = "Deployment created and queued successfully" if made else "Deployment exists"
        return ok(data, msg, 201)

    @r.get(
        V1 + "/{id:\\d+}/",
        "One deployment, with health and metrics",
        response=Envelope,
        errors=(404,),
    )
    async def get(request: web.Request) -> web.Response:
        return ok(details(service, dep_of(request)))

    @r.put(
        V1 + "/{id:\\d+}/",
        "Update branch, domain or env vars (a new branch or domain is redeployed)",
        request=UpdateBody,
        response=Envelope,
        errors=(400, 404, 409, 415, 429, 503),
        limit="deploy",
    )
    async def update(request: web.Request) -> web.Response:
        body = await decode_body(request, UpdateBody)
        dep = await service.update(
            dep_of(request), branch=body.branch, domain=body.domain, env=body.env_vars
        )
        return ok(details(service, dep), "Deployment updated")

    @r.delete(
        V1 + "/{id:\\d+}/",
        "Delete a deployment: its unit, files, proxy entry and logs",
        response=Envelope,
        errors=(404,),
    )
    async def delete(request: web.Request) -> web.Response:
        dep = dep_of(request)
        await service.delete(dep)
        return ok({"id": dep.id, "name": dep.name}, "Deployment deleted")

    def action(verb: str) -> None:
        @r.post(
            V1 + "/{id:\\d+}/" + verb + "/",
            f"{verb.capitalize()} a deployment",
            response=Envelope,
            errors=(404, 409, 429, 503),
            limit="deploy" if verb == "redeploy" else None,
        )
        async def act(request: web.Request) -> web.Response:
            dep = await getattr(service, verb)(dep_of(request))
            return ok(item(dep), f"Deployment {verb} requested")

    for verb in ("start", "stop", "restart", "redeploy"):
        action(verb)

    @r.get(
        V1 + "/{id:\\d+}/logs/",
        "Build and runtime log items, oldest first (follow=true streams NDJSON)",
        response=Envelope,
        errors=(400, 404),
        query=("lines", "level", "since", "follow"),
    )
    async def logs(request: web.Request) -> web.StreamResponse:
        dep = dep_of(request)
        lines = int_arg(request, "lines")
        level = request.query.get("level", "")
        since = since_arg(request)
        items = service.logs(dep, tail=lines, level=level, since=since)
        if request.query.get("follow", "") not in ("1", "true"):
            data = {
                "logs": [
                    {"timestamp": iso(i.created_at), "source": "webops", **log_out(i)}
                    for i in items
                ],
                "total_lines": len(items),
                "is_live": False,
            }
            return ok(data)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        last = max((i.id for i in items), default=0)
        if not items:
            last = max((i.id for i in service.logs(dep)), default=0)
        for i in items:
            await resp.write(msgspec.json.encode(log_out(i)) + b"\n")
        ends = time.monotonic() + FOLLOW_MAX_S
        while time.monotonic() < ends:
            await asyncio.sleep(0.5)
            transport = request.transport
            if transport is None or transport.is_closing():
                break  # the client went away
            try:
                current = service.get_id(dep.tenant, dep.id)
            except Exception:
                break
            for i in service.logs(current, level=level, after_id=last):
                last = i.id
                await resp.write(msgspec.json.encode(log_out(i)) + b"\n")
        await resp.write_eof()
        return resp

    @r.get(V1 + "/{id:\\d+}/env/", "A deployment's env vars", response=Envelope, errors=(404,))
    async def env(request: web.Request) -> web.Response:
        return ok({"env_vars": dep_of(request).env})

    @r.put(
        V1 + "/{id:\\d+}/env/",
        "Replace a deployment's env vars (restart: apply now)",
        request=EnvPut,
        response=Envelope,
        errors=(400, 404, 415),
    )
    async def put_env(request: web.Request) -> web.Response:
        body = await decode_body(request, EnvPut)
        dep = dep_of(request)
        dep = await service.set_env(dep, body.env_vars, unset=set(dep.env) - set(body.env_vars))
        if body.restart and dep.unit:
            dep = await service.restart(dep)
        return ok({"env_vars": dep.env}, "Environment updated")

    return Family(V1, ENVELOPE, r.routes)


# --- /api/... (the WebOps command-line client) ---------------------------------------------


def cli_routes(service: WebOpsService) -> list[Family]:
    r = RouteTable(permission=perms.DEPLOYMENTS)
    s = RouteTable(permission=None)

    def dep_of(request: web.Request) -> WebDeployment:
        return service.get(tenant_of(request), request.match_info["name"])

    @s.get(STATUS + "/", "Service status (the client's connectivity check)")
    async def status(request: web.Request) -> web.Response:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return json_response(
            {
                "status": "ok",
                "version": VERSION,
                "timestamp": iso(time.time()),
                "cpu_usage": round(100.0 * load / (os.cpu_count() or 1), 1),
                "memory_usage": memory_percent(),
            }
        )

    @r.get(
        CLI + "/",
        "Deployments, newest first",
        errors=(400,),
        query=("page", "per_page", "status", "project_type", "search"),
    )
    async def list_(request: web.Request) -> web.Response:
        q = query_of(request)
        found, total = service.list_deployments(tenant_of(request), q)
        items = [item(dep) for dep in found]
        pag = {
            "page": q.offset // q.limit + 1,
            "per_page": q.limit,
            "total": total,
            "pages": max(1, math.ceil(total / q.limit)),
        }
        return json_response({"deployments": items, "results": items, "pagination": pag})

    @r.post(
        CLI + "/create/",
        "Create a deployment (idempotent by name)",
        request=CreateRequest,
        ok=201,
        errors=(400, 404, 409, 415, 429, 503),
        limit="deploy",
    )
    async def create(request: web.Request) -> web.Response:
        body = await decode_body(request, CreateRequest, max_bytes=1 << 20)
        dep, made = await service.create(tenant_of(request), body, actor=actor(request))
        msg = f"Deployment {dep.name} created" if made else f"Deployment {dep.name} exists"
        return json_response(
            {"id": dep.id, "name": dep.name, "status": dep.status, "message": msg}, 201
        )

    @r.get(CLI + "/{name}/", "One deployment", errors=(404,))
    async def info(request: web.Request) -> web.Response:
        return json_response(details(service, dep_of(request)))

    async def remove(request: web.Request) -> web.Response:
        dep = dep_of(request)
        await service.delete(dep)
        return json_response({"message": f"Deployment {dep.name} deleted"})

    r.delete(CLI + "/{name}/", "Delete a deployment", errors=(404,))(remove)
    r.delete(
        CLI + "/{name}/delete/", "Delete a deployment (the client's other spelling)", errors=(404,)
    )(remove)

    def action(verb: str) -> None:
        @r.post(
            CLI + "/{name}/" + verb + "/",
            f"{verb.capitalize()} a deployment",
            errors=(404, 409, 429, 503),
            limit="deploy" if verb == "redeploy" else None,
        )
        async def act(request: web.Request) -> web.Response:
            dep = await getattr(service, verb)(dep_of(request))
            return json_response({"message": f"Deployment {dep.name}: {verb} requested"})

    for verb in ("start", "stop", "restart", "redeploy"):
        action(verb)

    @r.get(CLI + "/{name}/logs/", "Log items, oldest first", errors=(400, 404), query=("tail",))
    async def logs(request: web.Request) -> web.Response:
        dep = dep_of(request)
        items = service.logs(
            dep,
            tail=int_arg(request, "tail"),
            level=request.query.get("level", ""),
            since=since_arg(request),
        )
        return json_response({"logs": [log_out(i) for i in items]})

    @r.get(CLI + "/{name}/env/", "Env vars", errors=(404,))
    async def env(request: web.Request) -> web.Response:
        return json_response({"env_vars": dep_of(request).env})

    @r.post(CLI + "/{name}/env/set/", "Set an env var", request=EnvSet, errors=(400, 404, 415))
    async def env_set(request: web.Request) -> web.Response:
        body = await decode_body(request, EnvSet)
        dep = await service.set_env(dep_of(request), {body.key: body.value})
        if body.restart and dep.unit:
            await service.restart(dep)
        return json_response({"message": f"{body.key} set", "env_vars": dep.env})

    @r.post(CLI + "/{name}/env/unset/", "Unset an env var", request=EnvUnset, errors=(400, 404))
    async def env_unset(request: web.Request) -> web.Response:
        body = await decode_body(request, EnvUnset)
        dep = await service.set_env(dep_of(request), {}, unset=[body.key])
        if body.restart and dep.unit:
            await service.restart(dep)
        return json_response({"message": f"{body.key} unset", "env_vars": dep.env})

    async def env_validate(request: web.Request) -> web.Response:
        return json_response(env_check(service, dep_of(request)))

    r.get(CLI + "/{name}/env/validate/", "Which required env vars are missing", errors=(404,))(
        env_validate
    )
    r.post(CLI + "/{name}/env/validate/", "Which required env vars are missing", errors=(404,))(
        env_validate
    )

    @r.post(
        CLI + "/{name}/env/generate/",
        "Generate an environment (example defaults, SECRET_KEY, DEBUG, ALLOWED_HOSTS)",
        request=EnvGenerate,
        errors=(400, 404),
    )
    async def env_generate(request: web.Request) -> web.Response:
        body = await optional_body(request, EnvGenerate)
        dep = dep_of(request)
        env = rules.generated_env(
            dep.env_example,
            debug=body.debug,
            domain=body.domain if body.domain is not None else dep.domain,
            custom=body.custom_vars,
        )
        if body.save:
            dep = await service.set_env(dep, env)
        return json_response({"message": "environment generated", "env_vars": dep.env})

    @r.get(
        CLI + "/{name}/project/validate/", "Is the repository deployable as its type", errors=(404,)
    )
    async def project_validate(request: web.Request) -> web.Response:
        return json_response(project_check(dep_of(request)))

    return [
        Family(STATUS, WEBOPS_CLI, s.routes),
        Family(CLI, WEBOPS_CLI, r.routes),
    ]


def memory_percent() -> float:
    try:
        text = Path("/proc/meminfo").read_text(encoding="ascii")
        info = {line.split(":")[0]: int(line.split()[1]) for line in text.splitlines()[:5]}
        return round(100.0 * (1 - info["MemAvailable"] / info["MemTotal"]), 1)
    except (OSError, KeyError, ValueError, ZeroDivisionError):
        return 0.0


def routes(service: WebOpsService) -> list[Family]:
    return [v1_routes(service), *cli_routes(service)]
