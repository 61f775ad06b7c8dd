"""The OpenAPI 3.1 document of the coordinator's HTTP API, served at /openapi.json.

Generated from the route declarations the server registers (coordinator/api/routing.py:
one list of routes, not two); schemas come from the same msgspec Structs the handlers
encode and decode, so the document cannot drift from the routes or the wire format.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from coordinator import __version__
from coordinator.api.errors import CliError, EnvelopeError, ErrorBody, FlatError
from coordinator.api.routing import Family, Route
from coordinator.trust import permissions as perms
from coordinator.trust import users
from coordinator.trust.access import MAX_TOKEN_TTL_S, MAX_TOKENS_PER_CALL
from proto.units import CONTAINER_SUFFIX, SYSTEMD_SUFFIXES

Json = dict[str, Any]


def document(families: Iterable[Family]) -> Json:
    """The document of exactly the routes these families declare (what the server
    registered): each with its family's error body."""
    declared = [
        (route, family.conventions.error_body)
        for family in families
        for route in family.routes
        if route.documented
    ]
    types = [t for r, _ in declared for t in (r.request, r.response) if t is not None]
    types = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(
        [*types, ErrorBody, EnvelopeError, FlatError, CliError],
        ref_template="#/components/schemas/{name}",
    )
    refs = dict(zip([*types, ErrorBody, EnvelopeError, FlatError, CliError], schemas, strict=True))
    _tighten(components)
    paths: Json = {}
    for route, error_body in declared:
        error_schema = refs[error_body]
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
        limited = (429,) if route.limit or not route.public else ()
        for status in (*route.errors, *_input_errors(route), 401, *limited):
            if status < 400:  # another success (202 for a job, say): the same body
                op["responses"][str(status)] = ok
                continue
            op["responses"][str(status)] = {
                "description": "error",
                "content": {"application/json": {"schema": error_schema}},
            }
        if route.public:
            op["security"] = []
            if 401 not in route.errors:  # a login answers 401 to wrong credentials
                del op["responses"]["401"]
        paths.setdefault(_plain_path(route.path), {})[route.method.lower()] = op
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
    "alias": {"type": "string", "minLength": 1, "maxLength": 256},
    "run_id": {"type": "string", "format": "uuid"},
    "token": {
        "type": "string",
        "pattern": "^(mut\\.[0-9a-f]{1,64}\\.[0-9a-f]{1,128}|[0-9a-f]{1,64})$",
    },
    "username": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"},
    # Environments (#18): ids or names.
    "envId": {"type": "string", "minLength": 1, "maxLength": 128},
    "windowId": {"type": "string", "minLength": 1, "maxLength": 128},
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
    "principal": {"type": "string", "maxLength": 256},
    "tenant": {"type": "string", "maxLength": 256},
    "kind": {"type": "string", "enum": ["request", "event"]},
    "method": {"type": "string", "maxLength": 16},
    "path": {"type": "string", "maxLength": 1024},
    "route": {"type": "string", "maxLength": 1024},
    "status": {"type": "string", "pattern": "^[1-5][0-9]{2}$"},
    "event": {"type": "string", "maxLength": 128},
    "since": {"type": "string", "pattern": "^[0-9]{1,12}(\\.[0-9]{1,6})?$"},
    "until": {"type": "string", "pattern": "^[0-9]{1,12}(\\.[0-9]{1,6})?$"},
    "page": {"type": "string", "pattern": "^[1-9][0-9]{0,8}$"},
    "per_page": {"type": "string", "pattern": "^[1-9][0-9]{0,2}$"},
    # Environments (#18).
    "includeState": _FLAG,
    "active": _FLAG,
    "environmentId": {"type": "string", "maxLength": 128},
    "targetType": {
        "type": "string",
        "enum": ["docker_host", "compose_host", "ecs_service", "nomad_job"],
    },
    "labels": {"type": "string", "maxLength": 4096},
    "healthStatus": {"type": "string", "enum": ["unknown", "healthy", "unhealthy", "unreachable"]},
    "project_type": {"type": "string", "enum": ["static", "python", "django", "docker", "node"]},
    "search": {"type": "string", "maxLength": 200},
    # WebOps exports (#21).
    "format": {"type": "string", "enum": ["json", "csv"]},
    "force": _FLAG,
    "period": {"type": "string", "enum": ["1h", "6h", "24h", "7d", "30d"]},
    "type": {"type": "string", "enum": ["nginx", "postgresql", "redis", "celery"]},
    "level": {"type": "string", "enum": ["info", "warning", "error", "success"]},
    "tail": {"type": "string", "pattern": "^[0-9]{1,5}$"},
}
USERNAME_SCHEMA: Json = {"pattern": "^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"}
PASSWORD_SCHEMA: Json = {"minLength": users.MIN_PASSWORD, "maxLength": users.MAX_PASSWORD}
TENANT_SCHEMA: Json = {"pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"}
PERMISSION_SCHEMA: Json = {
    "enum": [
        *perms.PERMISSIONS,
        *(f"role:{r}" for r in perms.ROLES),
        *(r for r in perms.ROLES if r not in perms.PERMISSIONS),
    ]
}
MACHINE_ID_SCHEMA: Json = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
_TIGHTER: dict[tuple[str, str], Json] = {
    ("PatchOp", "op"): {"enum": ["add", "replace", "remove"]},
    ("PatchOp", "path"): {"pattern": "^/[^/]+/metadata/[A-Za-z0-9_.-]+$"},
    ("ApiTokenRequest", "name"): {"pattern": "\\S", "maxLength": 256},
    ("ApiTokenRequest", "ttl_s"): {"exclusiveMinimum": 0, "maximum": MAX_TOKEN_TTL_S},
    ("JoinTokenRequest", "ttl_s"): {"exclusiveMinimum": 0, "maximum": MAX_TOKEN_TTL_S},
    ("JoinTokenRequest", "count"): {"minimum": 1, "maximum": MAX_TOKENS_PER_CALL},
    ("JoinTokenRequest", "machine_id"): {"pattern": "^([A-Za-z0-9][A-Za-z0-9_.-]{0,63})?$"},
    ("EnrollRequest", "machine_id"): MACHINE_ID_SCHEMA,
    ("DeletableUnit", "name"): UNIT_NAME_SCHEMA,
    ("BatchUnit", "name"): UNIT_NAME_SCHEMA,
    # Identity (coordinator/trust/users.py, permissions.py): the service's own checks
    # give the clearer messages, so the rules live here, not in the Structs.
    ("UserCreate", "username"): USERNAME_SCHEMA,
    ("UserCreate", "password"): PASSWORD_SCHEMA,
    ("UserCreate", "email"): {
        "maxLength": users.MAX_EMAIL,
        "pattern": "^([^@\\s]+@[^@\\s]+)?$",
    },
    ("UserCreate", "permissions"): {"items": PERMISSION_SCHEMA},
    ("UserCreate", "tenants"): {"items": TENANT_SCHEMA},
    ("PermissionsBody", "permissions"): {"items": PERMISSION_SCHEMA},
    ("PasswordBody", "password"): PASSWORD_SCHEMA,
    ("TokenRequest", "username"): {"maxLength": 256},
    ("TokenRequest", "password"): {"maxLength": users.MAX_PASSWORD},
    ("TokenRequest", "name"): {"maxLength": users.MAX_TOKEN_NAME},
    ("TokenRequest", "expires_in"): {
        "minimum": users.MIN_TOKEN_TTL_S,
        "maximum": users.MAX_TOKEN_TTL_S,
    },
    ("TokenRequest", "permissions"): {"minItems": 1, "items": PERMISSION_SCHEMA},
    ("TokenRequest", "tenant"): TENANT_SCHEMA,
    # Environments (#18): names as the deploy domain's (coordinator/deploy/groups.py).
    ("EnvironmentIn", "name"): {"pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
    ("EnvironmentIn", "requiredApprovals"): {"minimum": 0, "maximum": 10},
    ("FreezeWindowIn", "start"): {"format": "date-time"},
    ("FreezeWindowIn", "end"): {"format": "date-time"},
    ("TargetIn", "name"): {"pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
    ("TargetIn", "targetType"): {
        "enum": ["docker_host", "compose_host", "ecs_service", "nomad_job"]
    },
    ("TargetGroupIn", "name"): {"pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
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
                elif option.get("type") == "array":
                    option.update({k: v for k, v in extra.items() if k != "items"})
                    option.get("items", {}).update(extra.get("items", {}))


def _input_errors(route: Route) -> tuple[int, ...]:
    """Refusals every route with input can give: bad parameters, and for a body its
    size, framing, deadline and media type (coordinator/guard.py)."""
    has_input = bool(route.query or _path_params(route.path))
    if route.request is not None:
        return (400, 408, 413, 415)
    return (400,) if has_input else ()


def _plain_path(path: str) -> str:
    """An aiohttp path with `{name:regex}` segments as OpenAPI's `{name}`."""
    return "/".join(
        "{" + seg[1:-1].split(":")[0] + "}" if seg.startswith("{") else seg
        for seg in path.split("/")
    )


def _path_params(path: str) -> list[str]:
    return [seg[1:-1].split(":")[0] for seg in path.split("/") if seg.startswith("{")]
