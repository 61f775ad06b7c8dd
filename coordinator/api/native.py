"""`/moorage/v1/`: Moorage's own operator routes (what `moorctl` needs beyond fleet)."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from coordinator.api.errors import ApiError, decode_body, json_response
from coordinator.auth import ROLE_ADMIN
from coordinator.hub import Hub
from coordinator.models import ApiToken, Machine
from coordinator.storage import Storage
from coordinator.tokens import format_token, hash_secret, new_api_token, new_join_token

PREFIX = "/moorage/v1"
MAX_TOKEN_TTL_S = 30 * 86400.0


class JoinTokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ttl_s: float | None = None
    description: str = ""


class JoinTokenCreated(msgspec.Struct, frozen=True):
    id: str
    token: str
    expires_at: float


class ApiTokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    ttl_s: float | None = None


class ApiTokenCreated(msgspec.Struct, frozen=True):
    id: str
    name: str
    token: str
    expires_at: float | None


class MachineList(msgspec.Struct, frozen=True):
    machines: list[Machine]
    connected: int


class ApiTokenList(msgspec.Struct, frozen=True):
    tokens: list[ApiToken]


def _ttl(value: float | None, default: float) -> float:
    ttl = default if value is None else value
    if not 0 < ttl <= MAX_TOKEN_TTL_S:
        raise ApiError(400, f"ttl_s must be between 1 and {int(MAX_TOKEN_TTL_S)} seconds")
    return ttl


def create_join_token(storage: Storage, ca_pin: str, ttl_s: float, description: str = "") -> str:
    """Shared by the API and `moorage dev`: the plain token exists only in the return value."""
    token = new_join_token(ca_pin)
    storage.create_join_token(
        token.id, hash_secret(token.secret), now=time.time(), ttl_s=ttl_s, description=description
    )
    return format_token(token)


def create_api_token(storage: Storage, name: str, ttl_s: float | None) -> tuple[str, ApiToken]:
    token = new_api_token()
    record = storage.create_api_token(
        token.id,
        hash_secret(token.secret),
        name=name,
        role=ROLE_ADMIN,
        now=time.time(),
        ttl_s=ttl_s,
    )
    return format_token(token), record


def routes(storage: Storage, hub: Hub, *, ca_pin: str, join_ttl_s: float) -> web.RouteTableDef:
    r = web.RouteTableDef()

    @r.get(PREFIX + "/machines")
    async def list_machines(request: web.Request) -> web.Response:
        include_revoked = request.query.get("all", "") in ("1", "true")
        machines = storage.list_machines(include_revoked=include_revoked)
        return json_response(MachineList(machines, len(hub.sessions)))

    @r.get(PREFIX + "/machines/{id}")
    async def get_machine(request: web.Request) -> web.Response:
        machine = storage.get_machine(request.match_info["id"])
        if machine is None:
            raise ApiError(404, f"machine {request.match_info['id']!r} does not exist")
        return json_response(machine)

    @r.post(PREFIX + "/machines/{id}/revoke")
    async def revoke_machine(request: web.Request) -> web.Response:
        machine_id = request.match_info["id"]
        if not await hub.revoke(machine_id):
            raise ApiError(404, f"machine {machine_id!r} does not exist")
        return web.Response(status=204)

    @r.post(PREFIX + "/join-tokens")
    async def new_join(request: web.Request) -> web.Response:
        body = await decode_body(request, JoinTokenRequest)
        ttl = _ttl(body.ttl_s, join_ttl_s)
        token = create_join_token(storage, ca_pin, ttl, body.description)
        return json_response(
            JoinTokenCreated(token.split(".")[1], token, time.time() + ttl), status=201
        )

    @r.post(PREFIX + "/api-tokens")
    async def new_api(request: web.Request) -> web.Response:
        body = await decode_body(request, ApiTokenRequest)
        if not body.name.strip():
            raise ApiError(400, "name must not be empty")
        ttl = None if body.ttl_s is None else _ttl(body.ttl_s, 0)
        token, record = create_api_token(storage, body.name, ttl)
        return json_response(
            ApiTokenCreated(record.id, record.name, token, record.expires_at), status=201
        )

    @r.get(PREFIX + "/api-tokens")
    async def list_api(request: web.Request) -> web.Response:
        return json_response(ApiTokenList(storage.list_api_tokens()))

    @r.delete(PREFIX + "/api-tokens/{id}")
    async def revoke_api(request: web.Request) -> web.Response:
        if not storage.revoke_api_token(request.match_info["id"]):
            raise ApiError(404, f"API token {request.match_info['id']!r} does not exist")
        return web.Response(status=204)

    return r
