"""`/moorage/v1/`: Moorage's own operator routes (what `moorctl` needs beyond fleet)."""

from __future__ import annotations

import time

import msgspec
from aiohttp import web

from coordinator.api.errors import ApiError, decode_body, json_response
from coordinator.auth import ROLE_ADMIN
from coordinator.hub import Hub
from coordinator.logs import LogService, LogUnavailable
from coordinator.models import ApiToken, Machine, Unit, UnitCopy
from coordinator.store.ports import Store as Storage
from coordinator.units import UnitService
from coordinator.validation import UnitInvalid, validate_unit
from proto.enrolment import machine_id_problem
from proto.messages import DesiredState
from proto.tokens import format_token, hash_secret, new_api_token, new_join_token
from proto.units import UnitNameError, UnitOption, validate_unit_name

PREFIX = "/moorage/v1"
MAX_TOKEN_TTL_S = 30 * 86400.0
MAX_TOKENS_PER_CALL = 10_000


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


def _ttl(value: float | None, default: float) -> float:
    ttl = default if value is None else value
    if not 0 < ttl <= MAX_TOKEN_TTL_S:
        raise ApiError(400, f"ttl_s must be between 1 and {int(MAX_TOKEN_TTL_S)} seconds")
    return ttl


def create_join_token(storage: Storage, ca_pin: str, ttl_s: float, description: str = "") -> str:
    """Shared by the API and `moorage dev`: the plain token exists only in the return value."""
    return create_join_tokens(storage, ca_pin, ttl_s, description, 1)[0]


def create_join_tokens(
    storage: Storage,
    ca_pin: str,
    ttl_s: float,
    description: str,
    count: int,
    *,
    machine_id: str = "",
) -> list[str]:
    tokens = [new_join_token(ca_pin) for _ in range(count)]
    storage.create_join_tokens(
        [(t.id, hash_secret(t.secret)) for t in tokens],
        now=time.time(),
        ttl_s=ttl_s,
        description=description,
        machine_id=machine_id,
    )
    return [format_token(t) for t in tokens]


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


def routes(
    storage: Storage,
    hub: Hub,
    units: UnitService,
    logs: LogService,
    *,
    ca_pin: str,
    join_ttl_s: float,
) -> web.RouteTableDef:
    r = web.RouteTableDef()

    def unit_name(request: web.Request) -> str:
        name = request.match_info["name"]
        try:
            validate_unit_name(name)
        except UnitNameError as exc:
            raise ApiError(400, str(exc)) from None
        return name

    @r.get(PREFIX + "/units")
    async def list_units(request: web.Request) -> web.Response:
        return json_response(UnitList(units.list_units()))

    @r.put(PREFIX + "/units")
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
        )
        return json_response(
            BatchResult(len(written.created) + len(written.replaced), written.created, written.kept)
        )

    @r.get(PREFIX + "/units/{name}")
    async def get_unit(request: web.Request) -> web.Response:
        unit = units.get(unit_name(request))
        if unit is None:
            raise ApiError(404, f"unit {request.match_info['name']!r} does not exist")
        return json_response(unit)

    @r.put(PREFIX + "/units/{name}")
    async def put_unit(request: web.Request) -> web.Response:
        name = unit_name(request)
        body = await decode_body(request, UnitRequest)
        try:
            validate_unit(name, body.options)
        except UnitInvalid as exc:
            raise ApiError(400, str(exc)) from None
        unknown = [mid for mid in body.machines or [] if storage.get_machine(mid) is None]
        if unknown:
            raise ApiError(400, f"unknown machine(s): {', '.join(unknown)}")
        unit = await units.put(name, body.options, body.desired_state, machines=body.machines)
        return json_response(unit)

    @r.delete(PREFIX + "/units/{name}")
    async def delete_unit(request: web.Request) -> web.Response:
        name = unit_name(request)
        if not await units.destroy(name):
            raise ApiError(404, f"unit {name!r} does not exist")
        return web.Response(status=204)

    @r.get(PREFIX + "/unit-states")
    async def unit_states(request: web.Request) -> web.Response:
        states = units.copies(
            machine_id=request.query.get("machine") or None,
            name=request.query.get("unit") or None,
        )
        return json_response(UnitStateList(states))

    @r.get(PREFIX + "/units/{name}/journal")
    async def journal(request: web.Request) -> web.StreamResponse:
        """Last `lines` lines as JSON, or with follow=1 an NDJSON stream of LogLines."""
        name = unit_name(request)
        unit = storage.get_unit(name)
        if unit is None:
            raise ApiError(404, f"unit {name!r} does not exist")
        machine = request.query.get("machine") or ""
        if not machine:
            if not unit.machines:
                raise ApiError(409, f"unit {name} is not scheduled on any machine")
            if len(unit.machines) > 1:
                raise ApiError(
                    400,
                    f"unit {name} runs on {len(unit.machines)} machines"
                    f" ({', '.join(unit.machines)}); pass machine=ID",
                )
            machine = unit.machines[0]
        try:
            lines = int(request.query.get("lines", "10"))
        except ValueError:
            raise ApiError(400, "lines must be an integer") from None
        follow = request.query.get("follow", "") in ("1", "true")
        cursor = request.query.get("cursor", "")
        stream = logs.stream(machine, name, lines=lines, follow=follow, cursor=cursor)
        if not follow:
            collected = []
            try:
                async for chunk in stream:
                    if chunk.error:
                        raise ApiError(502, f"machine {machine}: {chunk.error}")
                    collected.extend(chunk.lines)
            except LogUnavailable as exc:
                raise ApiError(503, str(exc)) from None
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
        if not 1 <= body.count <= MAX_TOKENS_PER_CALL:
            raise ApiError(400, f"count must be between 1 and {MAX_TOKENS_PER_CALL}")
        problem = machine_id_problem(body.machine_id) if body.machine_id else None
        if problem:
            raise ApiError(400, f"machine_id: {problem}")
        if body.machine_id and body.count != 1:
            raise ApiError(400, "a token bound to a machine is created alone (count 1)")
        first, *more = create_join_tokens(
            storage, ca_pin, ttl, body.description, body.count, machine_id=body.machine_id
        )
        return json_response(
            JoinTokenCreated(first.split(".")[1], first, time.time() + ttl, more), status=201
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
