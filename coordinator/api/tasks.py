"""The task API (Flotilla): `/api/v1` and `/api/v6` (same handlers) and
`PUT /api/v4/task/{id}/execute`, as real clients use it (spec/task-notes.md).

A thin adapter over `coordinator.tasks.service.TaskService`. Its conventions, in one
place here: bodies are JSON whatever their Content-Type, keys matched
case-insensitively (lower-cased before conversion); responses `application/json;
charset=utf-8`; errors `{"error": "<message>"}` (`routing.FLOTILLA`); list queries
echo their other parameters as arrays; times RFC 3339 with microseconds.

Run ids are uuid4s, and the top-level `/{run_id}/...` routes only match one, so they
never take a path of another family under the same prefix (`/api/v1/auth/...`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

import msgspec
from aiohttp import web

from coordinator import limits
from coordinator.api.errors import ApiError
from coordinator.api.routing import FLOTILLA, Family, RouteTable, tenant_of
from coordinator.errors import Invalid
from coordinator.tasks import definitions as defs
from coordinator.tasks.records import STATUSES, EnvVar, RunEvent, RunQuery, TaskDefinition, TaskRun
from coordinator.tasks.service import TaskService

T = TypeVar("T")

PREFIXES = ("/api/v1", "/api/v6")
EXECUTE_V4 = "/api/v4"
RUN_ID = "{run_id:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}}"
PERMISSION = "tasks"
BODY_MAX = 1 << 20
RUN_SORTS = ("run_id", "cluster_name", "status", "started_at", "finished_at", "group_name")
_PAGING = ("limit", "offset", "sort_by", "order")


# --- wire shapes ------------------------------------------------------------------------


class DefinitionBody(msgspec.Struct, frozen=True):
    definition_id: str
    alias: str
    image: str
    group_name: str
    command: str
    memory: int
    cpu: int
    env: list[EnvVar]
    tags: list[str]
    retries: int


class Instance(msgspec.Struct, frozen=True):
    instance_id: str
    dns_name: str


class PodEvent(msgspec.Struct, frozen=True):
    timestamp: str
    event_type: str
    reason: str
    source_object: str
    message: str


class RunBody(msgspec.Struct, frozen=True, omit_defaults=True):
    run_id: str
    definition_id: str
    alias: str
    image: str
    cluster: str
    status: str
    group_name: str
    instance: Instance
    pod_events: list[PodEvent]
    description: str
    exit_code: int | None = None
    queued_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    env: list[EnvVar] | None = None
    command: str | None = None
    memory: int | None = None
    cpu: int | None = None
    exit_reason: str | None = None
    engine: str | None = None
    run_tags: dict[str, str] | None = None


class StatusBody(msgspec.Struct, frozen=True):
    run_id: str
    status: str
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    exit_code: int | None
    exit_reason: str | None
    definition_id: str
    alias: str
    cluster_name: str


class LogBody(msgspec.Struct, frozen=True):
    log: str
    last_seen: str


# --- conventions ------------------------------------------------------------------------


def rfc3339(t: float | None) -> str | None:
    """`2026-01-01T00:00:00.123456Z` (None stays None). Pure."""
    if t is None or t <= 0:
        return None
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lower_keys(value: Any) -> Any:
    """Every object key lower-cased, at every depth (the real server's decoder matches
    keys case-insensitively). Pure."""
    if isinstance(value, dict):
        return {str(k).lower(): lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [lower_keys(v) for v in value]
    return value


def parse_body(raw: bytes, kind: type[T]) -> T:
    """A JSON object whatever the Content-Type said; empty: `{}`. Pure."""
    if len(raw) > BODY_MAX:
        raise ApiError(413, f"request body larger than {BODY_MAX} bytes")
    obj: Any = {}
    if raw.strip():
        try:
            obj = limits.decode_json(raw, Any)
        except limits.TooDeep as exc:
            raise ApiError(400, str(exc)) from None
        except msgspec.DecodeError as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ApiError(400, "request body must be a JSON object")
    try:
        return msgspec.convert(lower_keys(obj), kind)
    except msgspec.ValidationError as exc:
        raise ApiError(400, f"invalid request body: {exc}") from None


async def body_of(request: web.Request, kind: type[T]) -> T:
    return parse_body(await request.read(), kind)


def ok(value: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=msgspec.json.encode(value),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


def _int_param(request: web.Request, name: str, default: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit() or int(text) > high:
        raise ApiError(400, f"{name} must be an integer between 0 and {high}")
    return int(text)


def _choice(request: web.Request, name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = request.query.get(name) or default
    if value not in allowed:
        raise ApiError(400, f"{name} must be one of {', '.join(allowed)}")
    return value


def _echo(request: web.Request, skip: tuple[str, ...]) -> dict[str, list[str]]:
    """Every other query parameter, as an array of its values."""
    return {k: request.query.getall(k) for k in dict.fromkeys(request.query) if k not in skip}


# --- shapes -----------------------------------------------------------------------------


def definition_body(d: TaskDefinition) -> DefinitionBody:
    return DefinitionBody(
        definition_id=d.definition_id,
        alias=d.alias,
        image=d.image,
        group_name=d.group_name,
        command=d.command,
        memory=d.memory,
        cpu=d.cpu,
        env=list(d.env),
        tags=list(d.tags),
        retries=d.retries,
    )


def run_body(r: TaskRun) -> RunBody:
    return RunBody(
        run_id=r.run_id,
        definition_id=r.definition_id,
        alias=r.alias,
        image=r.image,
        cluster=r.cluster,
        status=r.status,
        group_name=r.group_name,
        instance=Instance(r.machine_id, r.machine_host),
        pod_events=[],
        description=r.description or r.alias,
        exit_code=r.exit_code,
        queued_at=rfc3339(r.queued_at),
        started_at=rfc3339(r.started_at),
        finished_at=rfc3339(r.finished_at),
        env=list(r.env),
        command=r.command or None,
        memory=r.memory or None,
        cpu=r.cpu or None,
        exit_reason=r.exit_reason or None,
        engine=r.engine or None,
        run_tags=dict(r.run_tags) or None,
    )


def status_body(r: TaskRun) -> StatusBody:
    return StatusBody(
        run_id=r.run_id,
        status=r.status,
        queued_at=rfc3339(r.queued_at),
        started_at=rfc3339(r.started_at),
        finished_at=rfc3339(r.finished_at),
        exit_code=r.exit_code,
        exit_reason=r.exit_reason or None,
        definition_id=r.definition_id,
        alias=r.alias,
        cluster_name=r.cluster,
    )


def etag(r: TaskRun) -> str:
    return f'"{r.status}-{"unknown" if r.exit_code is None else r.exit_code}"'


def pod_event(e: RunEvent) -> PodEvent:
    return PodEvent(
        timestamp=rfc3339(e.at) or "",
        event_type="Warning" if e.reason in ("Lost",) else "Normal",
        reason=e.reason,
        source_object=e.source,
        message=e.message,
    )


def definition_query(request: web.Request) -> defs.DefinitionQuery:
    q = request.query
    return defs.DefinitionQuery(
        alias=q.getall("alias", []),
        group_name=q.getall("group_name", []),
        image=q.getall("image", []),
        command=q.getall("command", []),
        tag=q.getall("tag", []),
        sort_by=_choice(request, "sort_by", "group_name", defs.DEFINITION_SORTS),
        order=_choice(request, "order", "asc", ("asc", "desc")),
        limit=_int_param(request, "limit", defs.DEFAULT_LIMIT, defs.MAX_LIMIT),
        offset=_int_param(request, "offset", 0, 1 << 31),
    )


def run_query(request: web.Request, definition_id: str | None) -> RunQuery:
    q = request.query
    statuses = [s.upper() for s in q.getall("status", [])]
    bad = [s for s in statuses if s not in STATUSES]
    if bad:
        raise ApiError(400, f"status {bad[0]!r} must be one of {', '.join(STATUSES)}")
    env: list[tuple[str, str]] = []
    for item in q.getall("env", []):
        name, sep, value = item.partition("|")
        if not sep or not name:
            raise ApiError(400, f"env filter {item!r} must be NAME|VALUE")
        env.append((name, value))
    return RunQuery(
        definition_id=[definition_id] if definition_id else q.getall("definition_id", []),
        status=statuses,
        cluster=q.getall("cluster_name", []) + q.getall("cluster", []),
        alias=q.getall("alias", []),
        group_name=q.getall("group_name", []),
        image=q.getall("image", []),
        run_id=q.getall("run_id", []),
        env=env,
        sort_by=_choice(request, "sort_by", "started_at", RUN_SORTS),
        order=_choice(request, "order", "desc", ("asc", "desc")),
        limit=_int_param(request, "limit", defs.DEFAULT_LIMIT, defs.MAX_LIMIT),
        offset=_int_param(request, "offset", 0, 1 << 31),
    )


# --- routes -----------------------------------------------------------------------------


def routes(tasks: TaskService) -> list[Family]:
    """The families: `/api/v1` and `/api/v6` (v6 executes require run_tags.owner_id),
    and `/api/v4` (its execute only, owner required)."""
    return [
        Family("/api/v1", FLOTILLA, _table(tasks, "/api/v1", require_owner=False)),
        Family("/api/v6", FLOTILLA, _table(tasks, "/api/v6", require_owner=True)),
        Family(EXECUTE_V4, FLOTILLA, _v4(tasks)),
    ]


def _execute_handler(tasks: TaskService, *, require_owner: bool, by_alias: bool) -> Any:
    async def execute(request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        body = await body_of(request, defs.ExecuteInput)
        if by_alias:
            definition = tasks.definition_by_alias(tenant, request.match_info["alias"])
        else:
            definition = tasks.definition(tenant, request.match_info["id"])
        run = await tasks.execute(tenant, definition, body, require_owner=require_owner)
        return ok(run_body(run))

    return execute


def _v4(tasks: TaskService) -> list[Any]:
    r = RouteTable()
    r.put(
        EXECUTE_V4 + "/task/{id}/execute",
        "Execute a task definition (v4: run_tags.owner_id required); the Run",
        request=defs.ExecuteInput,
        response=RunBody,
        errors=(400, 404),
        permission=PERMISSION,
    )(_execute_handler(tasks, require_owner=True, by_alias=False))
    return r.routes


def _table(tasks: TaskService, base: str, *, require_owner: bool) -> list[Any]:
    r = RouteTable()
    kw: dict[str, Any] = {"permission": PERMISSION}

    @r.get(base + "/task", "List task definitions (filters, paging, sorting)", errors=(400,), **kw)
    async def list_definitions(request: web.Request) -> web.Response:
        query = definition_query(request)
        total, found = tasks.list_definitions(tenant_of(request), query)
        out: dict[str, Any] = {
            **_echo(request, _PAGING),
            "total": total,
            "definitions": [definition_body(d) for d in found],
            "limit": query.limit,
            "offset": query.offset,
            "sort_by": query.sort_by,
            "order": query.order,
            "env_filters": {},
        }
        return ok(out)

    @r.post(
        base + "/task",
        "Create a task definition (200 with it; 409 on a duplicate alias)",
        request=defs.DefinitionInput,
        response=DefinitionBody,
        errors=(400, 409),
        **kw,
    )
    async def create(request: web.Request) -> web.Response:
        body = await body_of(request, defs.DefinitionInput)
        return ok(definition_body(tasks.create_definition(tenant_of(request), body)))

    @r.get(
        base + "/task/alias/{alias}",
        "A task definition by alias",
        response=DefinitionBody,
        errors=(404,),
        **kw,
    )
    async def by_alias(request: web.Request) -> web.Response:
        found = tasks.definition_by_alias(tenant_of(request), request.match_info["alias"])
        return ok(definition_body(found))

    r.put(
        base + "/task/alias/{alias}/execute",
        "Execute a task definition by alias; the Run",
        request=defs.ExecuteInput,
        response=RunBody,
        errors=(400, 404),
        **kw,
    )(_execute_handler(tasks, require_owner=require_owner, by_alias=True))

    @r.get(base + "/task/history/{run_id}", "A run", response=RunBody, errors=(404,), **kw)
    async def task_history_run(request: web.Request) -> web.Response:
        return ok(run_body(tasks.run(tenant_of(request), request.match_info["run_id"])))

    @r.get(base + "/task/{id}", "A task definition", response=DefinitionBody, errors=(404,), **kw)
    async def get_definition(request: web.Request) -> web.Response:
        return ok(definition_body(tasks.definition(tenant_of(request), request.match_info["id"])))

    @r.put(
        base + "/task/{id}",
        "Update a task definition (non-empty fields merged); the whole definition",
        request=defs.DefinitionInput,
        response=DefinitionBody,
        errors=(400, 404, 409),
        **kw,
    )
    async def update(request: web.Request) -> web.Response:
        body = await body_of(request, defs.DefinitionInput)
        found = tasks.update_definition(tenant_of(request), request.match_info["id"], body)
        return ok(definition_body(found))

    @r.delete(
        base + "/task/{id}", "Deregister a task definition (its runs stay)", errors=(404,), **kw
    )
    async def delete(request: web.Request) -> web.Response:
        tasks.delete_definition(tenant_of(request), request.match_info["id"])
        return ok({"deleted": True})

    r.put(
        base + "/task/{id}/execute",
        "Execute a task definition; the Run",
        request=defs.ExecuteInput,
        response=RunBody,
        errors=(400, 404),
        **kw,
    )(_execute_handler(tasks, require_owner=require_owner, by_alias=False))

    def history_response(request: web.Request, definition_id: str | None) -> web.Response:
        query = run_query(request, definition_id)
        total, found = tasks.history(tenant_of(request), query)
        echo = _echo(request, _PAGING)
        if definition_id:
            echo["definition_id"] = [definition_id]
        return ok(
            {
                **echo,
                "total": total,
                "history": [run_body(x) for x in found],
                "limit": query.limit,
                "offset": query.offset,
                "sort_by": query.sort_by,
                "order": query.order,
                "env_filters": {},
            }
        )

    @r.get(
        base + "/task/{id}/history",
        "A definition's runs (filters, paging, sorting)",
        errors=(400, 404),
        **kw,
    )
    async def definition_history(request: web.Request) -> web.Response:
        definition_id = request.match_info["id"]
        tasks.definition(tenant_of(request), definition_id)
        return history_response(request, definition_id)

    @r.get(base + "/task/{id}/history/{run_id}", "A run", response=RunBody, errors=(404,), **kw)
    async def definition_run(request: web.Request) -> web.Response:
        return ok(run_body(tasks.run(tenant_of(request), request.match_info["run_id"])))

    @r.delete(
        base + "/task/{id}/history/{run_id}",
        'Stop a run (always {"terminated": true}, also when it finished)',
        errors=(404,),
        **kw,
    )
    async def stop(request: web.Request) -> web.Response:
        await tasks.stop(tenant_of(request), request.match_info["run_id"])
        return ok({"terminated": True})

    @r.get(base + "/history", "Every run (filters, paging, sorting)", errors=(400,), **kw)
    async def history(request: web.Request) -> web.Response:
        return history_response(request, None)

    @r.get(base + "/history/{run_id}", "A run", response=RunBody, errors=(404,), **kw)
    async def history_run(request: web.Request) -> web.Response:
        return ok(run_body(tasks.run(tenant_of(request), request.match_info["run_id"])))

    @r.get(
        base + "/" + RUN_ID + "/status",
        "A run's status, with an ETag (304 on If-None-Match)",
        response=StatusBody,
        errors=(404,),
        **kw,
    )
    async def status(request: web.Request) -> web.Response:
        run = tasks.run(tenant_of(request), request.match_info["run_id"])
        tag = etag(run)
        if request.headers.get("If-None-Match") == tag:
            return web.Response(status=304, headers={"ETag": tag})
        return ok(status_body(run), headers={"ETag": tag})

    @r.get(base + "/" + RUN_ID + "/events", "What happened to a run", errors=(404,), **kw)
    async def events(request: web.Request) -> web.Response:
        found = tasks.run_events(tenant_of(request), request.match_info["run_id"])
        return ok({"total": len(found), "pod_events": [pod_event(e) for e in found]})

    @r.get(
        base + "/" + RUN_ID + "/logs",
        "A run's log after `last_seen` (an opaque token); raw_text=true: all of it as text",
        response=LogBody,
        errors=(400, 404),
        **kw,
    )
    async def logs(request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        run_id = request.match_info["run_id"]
        if request.query.get("raw_text", "").lower() == "true":
            data = tasks.raw_log(tenant, run_id)
            return web.Response(body=data, content_type="text/plain", charset="utf-8")
        piece = tasks.logs(tenant, run_id, request.query.get("last_seen", ""))
        return ok(LogBody(piece.log, piece.last_seen))

    @r.get(base + "/clusters", 'Clusters: "default" and the machine groups', **kw)
    async def clusters(request: web.Request) -> web.Response:
        return ok({"clusters": tasks.clusters(tenant_of(request))})

    @r.get(base + "/groups", "The definitions' group names", **kw)
    async def groups(request: web.Request) -> web.Response:
        found = _filtered(tasks.group_names(tenant_of(request)), request)
        return ok({"total": len(found), "groups": found})

    @r.get(base + "/tags", "The definitions' tags", **kw)
    async def tags(request: web.Request) -> web.Response:
        found = _filtered(tasks.tags(tenant_of(request)), request)
        return ok({"total": len(found), "tags": found})

    @r.get(base + "/health", "The task API answers", **kw)
    async def health(request: web.Request) -> web.Response:
        return ok({"healthy": True})

    return r.routes


def _filtered(names: list[str], request: web.Request) -> list[str]:
    wanted = request.query.get("name", "")
    if len(wanted) > defs.MAX_NAME:
        raise Invalid(f"name must be at most {defs.MAX_NAME} characters")
    return [n for n in names if wanted in n]
