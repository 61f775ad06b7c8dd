"""The OpenAPI 3.1 document of the coordinator's HTTP API, served at /openapi.json.

Schemas come from the same msgspec Structs the handlers encode and decode, so the
document cannot drift from the wire format; the route table below is checked
against the application's router by the tests.
"""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from coordinator import __version__
from coordinator.api import fleet_manager as fm
from coordinator.api import fleet_v1, native, reports, v1_alpha
from coordinator.api.errors import EnvelopeError, ErrorBody
from coordinator.models import Machine, Unit
from proto.enrolment import EnrollRequest
from proto.units import CONTAINER_SUFFIX, SYSTEMD_SUFFIXES

Json = dict[str, Any]


class Route(msgspec.Struct, frozen=True):
    method: str
    path: str
    summary: str
    request: Any = None
    response: Any = None
    ok: int = 200
    errors: tuple[int, ...] = ()
    query: tuple[str, ...] = ()


PAGE = ("nextPageToken",)
ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", "Liveness probe (no authentication)"),
    Route(
        "GET",
        "/readyz",
        "Readiness probe (no authentication); 503 with the reason while storage is full",
        errors=(503,),
    ),
    Route("GET", "/metrics", "Prometheus metrics"),
    Route("GET", "/openapi.json", "This document"),
    Route("GET", "/agent/v1/ca", "The fleet CA certificate (PEM; public)"),
    Route(
        "POST",
        "/agent/v1/enroll",
        "Enrol a machine with a join token and a CSR",
        request=EnrollRequest,
        errors=(400, 403, 409, 415),
    ),
    Route("GET", "/fleet/v1/discovery", "fleet v1 discovery document", errors=(400,)),
    Route(
        "GET",
        "/fleet/v1/machines",
        "List machines",
        response=fleet_v1.MachinePage,
        errors=(400,),
        query=PAGE,
    ),
    Route(
        "PATCH",
        "/fleet/v1/machines",
        "Patch machine metadata (JSON-Patch)",
        request=list[fleet_v1.PatchOp],
        ok=204,
        errors=(400,),
    ),
    Route(
        "GET",
        "/fleet/v1/units",
        "List units",
        response=fleet_v1.UnitPage,
        errors=(400,),
        query=PAGE,
    ),
    Route(
        "GET", "/fleet/v1/units/{name}", "Get a unit", response=fleet_v1.FleetUnit, errors=(404,)
    ),
    Route(
        "PUT",
        "/fleet/v1/units/{name}",
        "Create, replace or change the state of a unit",
        request=fleet_v1.UnitBody,
        ok=201,
        errors=(204, 400, 409, 415),
    ),
    Route("DELETE", "/fleet/v1/units/{name}", "Destroy a unit", ok=204, errors=(404,)),
    Route(
        "GET",
        "/fleet/v1/state",
        "List unit states",
        response=fleet_v1.UnitStatePage,
        errors=(400,),
        query=(*PAGE, "machineID", "unitName"),
    ),
    Route(
        "GET",
        "/fleet/v1/state/{name}",
        "State of one unit",
        response=fleet_v1.FleetUnitState,
        errors=(404,),
    ),
    Route("GET", "/v1-alpha/discovery", "fleet v1-alpha discovery document"),
    Route(
        "GET",
        "/v1-alpha/units",
        "List units (draft shape)",
        response=v1_alpha.AlphaUnitPage,
        errors=(400,),
        query=PAGE,
    ),
    Route(
        "GET",
        "/v1-alpha/units/{name}",
        "Get a unit (draft shape)",
        response=v1_alpha.AlphaUnit,
        errors=(404,),
    ),
    Route(
        "DELETE",
        "/v1-alpha/units",
        "Destroy units",
        request=v1_alpha.DeletableUnits,
        ok=204,
        errors=(400,),
    ),
    Route(
        "GET",
        "/v1-alpha/machines",
        "List machines (draft shape)",
        response=v1_alpha.AlphaMachinePage,
        errors=(400,),
        query=PAGE,
    ),
    Route(
        "GET",
        "/moorage/v1/machines",
        "Machines with state",
        response=native.MachineList,
        query=("all",),
    ),
    Route("GET", "/moorage/v1/machines/{id}", "One machine", response=Machine, errors=(404,)),
    Route(
        "POST",
        "/moorage/v1/machines/{id}/revoke",
        "Revoke a machine's certificates",
        ok=204,
        errors=(404,),
    ),
    Route(
        "POST",
        "/moorage/v1/join-tokens",
        "Create a one-time join token",
        request=native.JoinTokenRequest,
        response=native.JoinTokenCreated,
        ok=201,
        errors=(400, 415),
    ),
    Route("GET", "/moorage/v1/api-tokens", "List API tokens", response=native.ApiTokenList),
    Route(
        "POST",
        "/moorage/v1/api-tokens",
        "Create an API token",
        request=native.ApiTokenRequest,
        response=native.ApiTokenCreated,
        ok=201,
        errors=(400, 415),
    ),
    Route("DELETE", "/moorage/v1/api-tokens/{id}", "Revoke an API token", ok=204, errors=(404,)),
    Route("GET", "/moorage/v1/units", "Units with placements", response=native.UnitList),
    Route(
        "PUT",
        "/moorage/v1/units",
        "Create or replace many units at once (keep_existing: create only new ones)",
        request=native.UnitBatch,
        response=native.BatchResult,
        errors=(400, 413, 415),
    ),
    Route("GET", "/moorage/v1/units/{name}", "One unit", response=Unit, errors=(404,)),
    Route(
        "PUT",
        "/moorage/v1/units/{name}",
        "Set a unit, optionally pinned to machines",
        request=native.UnitRequest,
        response=Unit,
        errors=(400, 415),
    ),
    Route("DELETE", "/moorage/v1/units/{name}", "Destroy a unit", ok=204, errors=(404,)),
    Route(
        "GET",
        "/moorage/v1/unit-states",
        "What machines report",
        response=native.UnitStateList,
        query=("machine", "unit"),
    ),
    Route(
        "GET",
        "/moorage/v1/units/{name}/journal",
        "Unit log lines; follow=1 streams NDJSON (409: the unit is on no machine)",
        errors=(400, 404, 409, 502, 503),
        query=("machine", "lines", "follow", "cursor"),
    ),
)


V2 = fm.PREFIX
LIST = ("limit", "cursor")
FLEET_MANAGER_ROUTES: tuple[Route, ...] = (
    Route(
        "GET", V2 + "/clusters", "Machines with health", response=fm.Page, errors=(400,), query=LIST
    ),
    Route("GET", V2 + "/clusters/{id}", "One machine", response=fm.ClusterOut, errors=(404,)),
    Route(
        "GET", V2 + "/cluster-groups", "Machine groups", response=fm.Page, errors=(400,), query=LIST
    ),
    Route(
        "POST",
        V2 + "/cluster-groups",
        "Create a machine group (by metadata selector and/or machine ids)",
        request=fm.GroupBody,
        response=fm.GroupOut,
        ok=201,
        errors=(400, 409, 415),
    ),
    Route(
        "GET", V2 + "/cluster-groups/{id}", "One machine group", response=fm.GroupOut, errors=(404,)
    ),
    Route(
        "PUT",
        V2 + "/cluster-groups/{id}",
        "Change a machine group",
        request=fm.GroupBody,
        response=fm.GroupOut,
        errors=(400, 404, 409, 415),
    ),
    Route(
        "DELETE",
        V2 + "/cluster-groups/{id}",
        "Delete a machine group",
        ok=204,
        errors=(400, 404, 409),
    ),
    Route(
        "GET",
        V2 + "/deployment-applications",
        "Applications (latest version each)",
        response=fm.Page,
        errors=(400,),
        query=LIST,
    ),
    Route(
        "POST",
        V2 + "/deployment-applications",
        "Create an application from its manifest (a retry returns the same object)",
        request=fm.ApplicationBody,
        response=fm.ApplicationOut,
        ok=201,
        errors=(400, 409, 415),
    ),
    Route(
        "GET",
        V2 + "/deployment-applications/{id}",
        "One application with its sourceConfig",
        response=fm.ApplicationOut,
        errors=(404,),
    ),
    Route(
        "PUT",
        V2 + "/deployment-applications/{id}",
        "Update an application; a changed manifest is a new version",
        request=fm.ApplicationBody,
        response=fm.ApplicationOut,
        errors=(400, 404, 409, 415),
    ),
    Route(
        "DELETE",
        V2 + "/deployment-applications/{id}",
        "Delete an application (409 while a deployment uses it)",
        ok=204,
        errors=(404, 409),
    ),
    Route("GET", V2 + "/deployments", "Deployments", response=fm.Page, errors=(400,), query=LIST),
    Route(
        "POST",
        V2 + "/deployments",
        "Bind an application to a cluster group",
        request=fm.DeploymentBody,
        response=fm.DeploymentOut,
        ok=201,
        errors=(400, 409, 415),
    ),
    Route(
        "GET", V2 + "/deployments/{id}", "One deployment", response=fm.DeploymentOut, errors=(404,)
    ),
    Route(
        "PUT",
        V2 + "/deployments/{id}",
        "Change a deployment (takes effect at the next deploy)",
        request=fm.DeploymentBody,
        response=fm.DeploymentOut,
        errors=(400, 404, 409, 415),
    ),
    Route(
        "DELETE",
        V2 + "/deployments/{id}",
        "Delete a deployment and its units (409 while a release runs)",
        ok=204,
        errors=(404, 409),
    ),
    Route(
        "POST",
        V2 + "/deployments/{id}/deploy",
        "Cut a release and start its rollout (409 while one runs)",
        response=fm.ReleaseOut,
        ok=201,
        errors=(400, 404, 409, 503),
    ),
    Route(
        "GET",
        V2 + "/deployments/{id}/releases",
        "The deployment's releases, oldest first",
        response=list[fm.ReleaseOut],
        errors=(404,),
        query=("limit",),
    ),
    Route(
        "GET",
        V2 + "/deployment-releases/{id}",
        "One release with its progress",
        response=fm.ReleaseOut,
        errors=(404,),
    ),
    Route(
        "GET",
        V2 + "/deployment-releases/{id}/jobs",
        "Each machine's part of a release",
        response=list[fm.JobOut],
        errors=(404,),
        query=("limit",),
    ),
)


REPORT_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        reports.PREFIX + "/drift",
        "Each machine's last drift report; refresh=1 asks the agents first",
        response=reports.DriftList,
        errors=(404, 503, 504),
        query=("machine", "refresh"),
    ),
    Route(
        "GET",
        reports.PREFIX + "/stickers",
        "Version stickers as the machines report them",
        response=reports.StickerList,
        errors=(404,),
        query=("machine",),
    ),
)


def document(app: web.Application | None = None) -> Json:
    routes = (*ROUTES, *FLEET_MANAGER_ROUTES, *REPORT_ROUTES)
    types = [t for r in routes for t in (r.request, r.response) if t is not None]
    schemas, components = msgspec.json.schema_components(
        [*types, ErrorBody, EnvelopeError], ref_template="#/components/schemas/{name}"
    )
    refs = dict(zip([*types, ErrorBody, EnvelopeError], schemas, strict=True))
    _tighten(components)
    paths: Json = {}
    for route in routes:
        error_schema = refs[EnvelopeError if route.path.startswith("/api/") else ErrorBody]
        op: Json = {"summary": route.summary, "responses": {}}
        params = [
            {"name": p, "in": "path", "required": True, "schema": PATH_PARAMS[p]}
            for p in _path_params(route.path)
        ] + [{"name": q, "in": "query", "schema": QUERY_PARAMS[q]} for q in route.query]
        if params:
            op["parameters"] = params
        if route.request is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[route.request]}},
            }
        ok: Json = {"description": "success"}
        if route.response is not None:
            ok["content"] = {"application/json": {"schema": refs[route.response]}}
        op["responses"][str(route.ok)] = ok
        for status in (*route.errors, *_input_errors(route), 401):
            op["responses"][str(status)] = {
                "description": "error",
                "content": {"application/json": {"schema": error_schema}},
            }
        if route.path in ("/healthz", "/readyz", "/agent/v1/ca", "/agent/v1/enroll"):
            op["security"] = []
            del op["responses"]["401"]
        paths.setdefault(route.path, {})[route.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Moorage coordinator API", "version": __version__},
        "security": [{"bearer": []}, {"clientCertificate": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "clientCertificate": {"type": "mutualTLS"},
            },
        },
    }


_UNIT_TYPES = "|".join((*SYSTEMD_SUFFIXES, CONTAINER_SUFFIX[1:]))
UNIT_NAME_SCHEMA: Json = {
    "type": "string",
    "maxLength": 256,
    "pattern": rf"^[A-Za-z0-9:_.\\-]{{1,200}}\.({_UNIT_TYPES})$",
}
"""Unit names the API accepts (templates aside: `@` is allowed only for some types)."""
PATH_PARAMS: dict[str, Json] = {
    "name": UNIT_NAME_SCHEMA,
    "id": {"type": "string", "minLength": 1, "maxLength": 128},
}
_FLAG: Json = {"type": "string", "enum": ["", "0", "1", "true", "false"]}
QUERY_PARAMS: dict[str, Json] = {
    "nextPageToken": {"type": "string", "pattern": "^[A-Za-z0-9_-]{6}==$"},
    "limit": {"type": "string", "pattern": "^[1-9][0-9]{0,5}$"},
    "cursor": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,1024}$"},
    "lines": {"type": "string", "pattern": "^[0-9]{1,5}$"},
    "follow": _FLAG,
    "refresh": _FLAG,
    "all": _FLAG,
    "machine": {"type": "string", "maxLength": 64},
    "machineID": {"type": "string", "maxLength": 64},
    "unitName": {"type": "string", "maxLength": 256},
    "unit": {"type": "string", "maxLength": 256},
}
MACHINE_ID_SCHEMA: Json = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
_TIGHTER: dict[tuple[str, str], Json] = {
    ("PatchOp", "op"): {"enum": ["add", "replace", "remove"]},
    ("PatchOp", "path"): {"pattern": "^/[^/]+/metadata/[A-Za-z0-9_.-]+$"},
    ("ApiTokenRequest", "name"): {"pattern": "\\S", "maxLength": 256},
    ("ApiTokenRequest", "ttl_s"): {"exclusiveMinimum": 0, "maximum": native.MAX_TOKEN_TTL_S},
    ("JoinTokenRequest", "ttl_s"): {"exclusiveMinimum": 0, "maximum": native.MAX_TOKEN_TTL_S},
    ("JoinTokenRequest", "count"): {"minimum": 1, "maximum": native.MAX_TOKENS_PER_CALL},
    ("JoinTokenRequest", "machine_id"): {"pattern": "^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$"},
    ("EnrollRequest", "machine_id"): MACHINE_ID_SCHEMA,
    ("DeletableUnit", "name"): UNIT_NAME_SCHEMA,
    ("BatchUnit", "name"): UNIT_NAME_SCHEMA,
}
"""What the handlers check beyond the Structs' types, so generated clients (and
schemathesis) know a valid request from an invalid one."""


def _tighten(components: Json) -> None:
    for (schema, field), extra in _TIGHTER.items():
        props = components.get(schema, {}).get("properties", {})
        if field in props:
            target = props[field]
            for option in target.get("anyOf", [target]):
                if option.get("type") in ("string", "integer", "number"):
                    option.update(extra)


def _input_errors(route: Route) -> tuple[int, ...]:
    """Refusals every route with input can give: bad parameters, and for a body its
    size, framing, deadline and media type (coordinator/guard.py)."""
    has_input = bool(route.query or _path_params(route.path))
    if route.request is not None:
        return (400, 408, 413, 415)
    return (400,) if has_input else ()


def _path_params(path: str) -> list[str]:
    return [seg[1:-1] for seg in path.split("/") if seg.startswith("{")]
