"""`/moorage/v1/`: Moorage's own operator routes (what `moorctl` needs beyond fleet)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from coordinator.api.errors import ApiError, decode_body, json_response
from coordinator.api.routing import FLEET, Family, RouteTable, tenant_of
from coordinator.fleet.machines import MachineService
from coordinator.fleet.units import UnitService
from coordinator.fleet.validation import UnitInvalid, validate_unit
from coordinator.models import TENANT_PATTERN, ApiToken, Machine, Unit, UnitCopy
from coordinator.reports.logs import LogService, LogUnavailable, journal_machine
from coordinator.trust import permissions as perms
from coordinator.trust.access import (
    MAX_TOKEN_TTL_S,
    MAX_TOKENS_PER_CALL,
    TokenService,
    mint_tenant,
)
from coordinator.trust.auth import PERM_ADMIN, PRINCIPAL
from proto.messages import DesiredState
from proto.units import UnitNameError, UnitOption, validate_unit_name

__all__ = ["MAX_TOKENS_PER_CALL", "MAX_TOKEN_TTL_S", "PREFIX", "routes"]

PREFIX = "/moorage/v1"


class JoinTokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ttl_s: float | None = None
    description: str = ""
    count: int = 1
    """Several tokens in one transaction, for enrolling many machines at once."""
    machine_id: str = ""
    """Bind the token to this machine: only it may enrol with it, even when enrolled."""


class JoinTokenCreated(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    token: str
    expires_at: float
    more: list[str] = []
    """With count > 1: the other tokens (token is the first)."""


class ApiTokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    ttl_s: float | None = None
    tenant: Annotated[str, msgspec.Meta(pattern=TENANT_PATTERN)] = ""
    """The tenant the token acts in (default: the caller's); naming another is for an
    admin of the default tenant only (403 otherwise)."""
    unlimited: bool = False
    """Exempt from the per-token general rate limit."""


class ApiTokenPatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    unlimited: bool


class ApiTokenCreated(msgspec.Struct, frozen=True):
    id: str
    name: str
    token: str
    expires_at: float | None
    tenant: str = "default"


class MachineList(msgspec.Struct, frozen=True):
    machines: list[Machine]
    connected: int


class ApiTokenList(msgspec.Struct, frozen=True):
    tokens: list[ApiToken]


class UnitRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Place a unit explicitly (the scheduler-free call tests and tools use)."""

    options: list[UnitOption]
    desired_state: DesiredState = "launched"
    machines: list[str] | None = None
    """Pin to these machines; omitted: the scheduler places the unit."""


class BatchUnit(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    options: list[UnitOption]
    desired_state: DesiredState = "launched"


class UnitBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Many units in one request: one transaction and one scheduling pass."""

    units: list[BatchUnit]
    keep_existing: bool = False
    """Create only the units that do not exist yet and leave the others untouched (what
    `fleetctl submit` / `moorctl submit` do); default: create or replace every unit."""


class BatchResult(msgspec.Struct, frozen=True):
    accepted: int
    """Units written (created or replaced)."""
    created: list[str] = []
    """Units that did not exist before."""
    existing: list[str] = []
    """With keep_existing: units that already existed and were left as they were."""


class UnitList(msgspec.Struct, frozen=True):
    units: list[Unit]


class UnitStateList(msgspec.Struct, frozen=True):
    states: list[UnitCopy]


def routes(
    units: UnitService, machines: MachineService, tokens: TokenService, logs: LogService
) -> Family:
    r = RouteTable(permission=perms.FLEET)

    def unit_name(request: web.Request) -> str:
        name = request.match_info["name"]
        try:
            validate_unit_name(name)
        except UnitNameError as exc:
            raise ApiError(400, str(exc)) from None
        return name

    @r.get(PREFIX + "/units", "Units with placements", response=UnitList)
    async def list_units(request: web.Request) -> web.Response:
        return json_response(UnitList(units.list_units(tenant=tenant_of(request))))

    @r.put(
        PREFIX + "/units",
        "Create or replace many units at once (keep_existing: create only new ones)",
        request=UnitBatch,
        response=BatchResult,
        errors=(400, 413, 415),
    )
    async def put_units(request: web.Request) -> web.Response:
        body = await decode_body(request, UnitBatch, max_bytes=256 << 20)
        seen: set[str] = set()
        for i, u in enumerate(body.units):
            if u.name in seen:
                raise ApiError(400, f"units[{i}]: {u.name} appears twice")
            seen.add(u.name)
            try:
                validate_unit(u.name, u.options)
            except UnitInvalid as exc:
                raise ApiError(400, f"units[{i}] ({u.name}): {exc}") from None
        written = await units.put_many(
            [(u.name, u.options, u.desired_state) for u in body.units],
            keep_existing=body.keep_existing,
            tenant=tenant_of(request),
        )
        return json_response(
            BatchResult(len(written.created) + len(written.replaced), written.created, written.kept)
        )

    @r.get(PREFIX + "/units/{name}", "One unit", response=Unit, errors=(404,))
    async def get_unit(request: web.Request) -> web.Response:
        return json_response(units.unit(unit_name(request), tenant=tenant_of(request)))

    @r.put(
        PREFIX + "/units/{name}",
        "Set a unit, optionally pinned to machines",
        request=UnitRequest,
        response=Unit,
        errors=(400, 415),
    )
    async def put_unit(request: web.Request) -> web.Response:
        name = unit_name(request)
        body = await decode_body(request, UnitRequest)
        try:
            validate_unit(name, body.options)
        except UnitInvalid as exc:
            raise ApiError(400, str(exc)) from None
        unknown = machines.unknown(body.machines or [], tenant=tenant_of(request))
        if unknown:
            raise ApiError(400, f"unknown machine(s): {', '.join(unknown)}")
        unit = await units.put(
            name,
            body.options,
            body.desired_state,
            machines=body.machines,
            tenant=tenant_of(request),
        )
        return json_response(unit)

    @r.delete(PREFIX + "/units/{name}", "Destroy a unit", ok=204, errors=(404,))
    async def delete_unit(request: web.Request) -> web.Response:
        name = unit_name(request)
        if not await units.destroy(name, tenant=tenant_of(request)):
            raise ApiError(404, f"unit {name!r} does not exist")
        return web.Response(status=204)

    @r.get(
        PREFIX + "/unit-states",
        "What machines report",
        response=UnitStateList,
        query=("machine", "unit"),
    )
    async def unit_states(request: web.Request) -> web.Response:
        states = units.copies(
            machine_id=request.query.get("machine") or None,
            name=request.query.get("unit") or None,
            tenant=tenant_of(request),
        )
        return json_response(UnitStateList(states))

    @r.get(
        PREFIX + "/units/{name}/journal",
        "Unit log lines; follow=1 streams NDJSON (409: the unit is on no machine)",
        errors=(400, 404, 409, 502, 503),
        query=("machine", "lines", "follow", "cursor"),
    )
    async def journal(request: web.Request) -> web.StreamResponse:
        """Last `lines` lines as JSON, or with follow=1 an NDJSON stream of LogLines."""
        name = unit_name(request)
        tenant = tenant_of(request)
        machine = journal_machine(
            name, units.get(name, tenant=tenant), request.query.get("machine") or ""
        )
        machines.get(machine, tenant=tenant)  # another tenant's machine is not found
        try:
            lines = int(request.query.get("lines", "10"))
        except ValueError:
            raise ApiError(400, "lines must be an integer") from None
        follow = request.query.get("follow", "") in ("1", "true")
        cursor = request.query.get("cursor", "")
        stream = logs.stream(machine, name, lines=lines, follow=follow, cursor=cursor)
        if not follow:
            collected = []
            async for chunk in stream:
                if chunk.error:
                    raise ApiError(502, f"machine {machine}: {chunk.error}")
                collected.extend(chunk.lines)
            return json_response({"machine": machine, "unit": name, "lines": collected})
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        try:
            async for chunk in stream:
                for line in chunk.lines:
                    await response.write(msgspec.json.encode(line) + b"\n")
                if chunk.error:
                    await response.write(msgspec.json.encode({"error": chunk.error}) + b"\n")
        except LogUnavailable as exc:
            await response.write(msgspec.json.encode({"error": str(exc)}) + b"\n")
        except ConnectionResetError:
            pass
        return response

    @r.get(PREFIX + "/machines", "Machines with state", response=MachineList, query=("all",))
    async def list_machines(request: web.Request) -> web.Response:
        include_revoked = request.query.get("all", "") in ("1", "true")
        listed = machines.list_machines(include_revoked=include_revoked, tenant=tenant_of(request))
        return json_response(
            MachineList(listed, machines.connected_count(tenant=tenant_of(request)))
        )

    @r.get(PREFIX + "/machines/{id}", "One machine", response=Machine, errors=(404,))
    async def get_machine(request: web.Request) -> web.Response:
        return json_response(machines.get(request.match_info["id"], tenant=tenant_of(request)))

    @r.post(
        PREFIX + "/machines/{id}/revoke", "Revoke a machine's certificates", ok=204, errors=(404,)
    )
    async def revoke_machine(request: web.Request) -> web.Response:
        await machines.revoke(request.match_info["id"], tenant=tenant_of(request))
        return web.Response(status=204)

    @r.post(
        PREFIX + "/join-tokens",
        "Create a one-time join token",
        request=JoinTokenRequest,
        response=JoinTokenCreated,
        ok=201,
        errors=(400, 404, 415),
    )
    async def new_join(request: web.Request) -> web.Response:
        body = await decode_body(request, JoinTokenRequest)
        made = tokens.create_join_tokens(
            ttl_s=body.ttl_s,
            description=body.description,
            count=body.count,
            machine_id=body.machine_id,
            tenant=tenant_of(request),
        )
        first, *more = made.tokens
        return json_response(
            JoinTokenCreated(first.split(".")[1], first, made.expires_at, more), status=201
        )

    @r.post(
        PREFIX + "/api-tokens",
        "Create an API token",
        request=ApiTokenRequest,
        response=ApiTokenCreated,
        ok=201,
        errors=(400, 403, 415),
        permission=perms.ADMIN,
    )
    async def new_api(request: web.Request) -> web.Response:
        body = await decode_body(request, ApiTokenRequest)
        principal = request[PRINCIPAL]
        tenant = mint_tenant(principal.tenant, body.tenant, is_admin=principal.allows(PERM_ADMIN))
        token, record = tokens.create_api_token(
            body.name, body.ttl_s, tenant=tenant, unlimited=body.unlimited
        )
        return json_response(
            ApiTokenCreated(record.id, record.name, token, record.expires_at, record.tenant),
            status=201,
        )

    @r.get(PREFIX + "/api-tokens", "List API tokens", response=ApiTokenList, permission=perms.ADMIN)
    async def list_api(request: web.Request) -> web.Response:
        return json_response(ApiTokenList(tokens.api_tokens(tenant=tenant_of(request))))

    @r.patch(
        PREFIX + "/api-tokens/{id}",
        "Exempt an API token from the general rate limit, or not",
        request=ApiTokenPatch,
        ok=204,
        errors=(400, 404, 415),
        permission=perms.ADMIN,
    )
    async def patch_api(request: web.Request) -> web.Response:
        body = await decode_body(request, ApiTokenPatch)
        tokens.set_unlimited(request.match_info["id"], body.unlimited, tenant=tenant_of(request))
        return web.Response(status=204)

    @r.delete(
        PREFIX + "/api-tokens/{id}",
        "Revoke an API token",
        ok=204,
        errors=(404,),
        permission=perms.ADMIN,
    )
    async def revoke_api(request: web.Request) -> web.Response:
        tokens.revoke_api_token(request.match_info["id"], tenant=tenant_of(request))
        return web.Response(status=204)

    return Family(PREFIX, FLEET, r.routes)
