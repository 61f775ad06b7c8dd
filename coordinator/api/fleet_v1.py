"""`/fleet/v1/`: what `fleetctl` v1.0.0 speaks (spec/fleet-v1-notes.md), to the status code.

A thin adapter: every rule about units lives in coordinator/fleet/units.py,
coordinator/fleet/validation.py and coordinator/fleet/scheduler.py; this module only maps
fleet's JSON shapes and status codes onto them.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from coordinator.api.discovery import fleet_v1_discovery
from coordinator.api.errors import ApiError, decode_fleet, json_response
from coordinator.api.paging import (
    PageToken,
    PageTokenError,
    next_token,
    page,
    page_bounds,
    token_from_query,
)
from coordinator.api.routing import FLEET, Family, RouteTable, tenant_of
from coordinator.fleet.machines import MachineService
from coordinator.fleet.scheduler import XFleetError, parse_xfleet
from coordinator.fleet.units import UnitService, current_state
from coordinator.fleet.validation import UnitInvalid, validate_name
from coordinator.models import Machine, Unit, UnitCopy, UnitState
from coordinator.trust import permissions as perms
from proto.units import UnitOption

PREFIX = "/fleet/v1"
DESIRED = ("inactive", "loaded", "launched")
_PATCH_PATH = re.compile(r"/([^/]+)/metadata/([A-Za-z0-9_.-]+)")


class FleetMachine(msgspec.Struct, frozen=True):
    id: str
    primaryIP: str
    metadata: dict[str, str]


class MachinePage(msgspec.Struct, frozen=True, omit_defaults=True):
    machines: list[FleetMachine]
    nextPageToken: str | None = None


class FleetUnit(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    options: list[UnitOption]
    machineID: str
    desiredState: str = ""
    currentState: str = ""


class UnitPage(msgspec.Struct, frozen=True, omit_defaults=True):
    units: list[FleetUnit]
    nextPageToken: str | None = None


class FleetUnitState(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    hash: str = ""
    machineID: str = ""
    systemdLoadState: str = ""
    systemdActiveState: str = ""
    systemdSubState: str = ""
    stale: bool = False
    """Moorage's addition (clients that do not know it ignore it): the machine is not
    connected, so this copy is what it last reported, `ageSeconds` ago."""
    ageSeconds: float = 0.0


class UnitStatePage(msgspec.Struct, frozen=True, omit_defaults=True):
    states: list[FleetUnitState]
    nextPageToken: str | None = None


class UnitBody(msgspec.Struct, frozen=True):
    """What fleetctl PUTs; other fields it may send (currentState, machineID) are ignored."""

    name: str = ""
    options: list[UnitOption] | None = None
    desiredState: str = ""


class PatchOp(msgspec.Struct, frozen=True):
    op: str = ""
    path: str = ""
    value: Any = None


def fleet_machine(machine: Machine) -> FleetMachine:
    return FleetMachine(machine.id, machine.primary_ip, dict(machine.metadata))


def visible(machine: Machine) -> bool:
    """fleet lists machines that are present; a lost machine has left the cluster."""
    return not machine.revoked and machine.state != "lost"


def fleet_unit(unit: Unit, states: list[UnitState]) -> FleetUnit:
    is_global = len(unit.machines) > 1 or _is_global(unit)
    return FleetUnit(
        name=unit.name,
        options=list(unit.options),
        machineID="" if is_global or not unit.machines else unit.machines[0],
        desiredState=unit.desired_state,
        currentState="" if is_global else current_state(unit, states),
    )


def _is_global(unit: Unit) -> bool:
    if not any(o.section == "X-Fleet" for o in unit.options):
        return False  # the common case, without parsing
    try:
        return parse_xfleet(unit.options).is_global
    except XFleetError:
        return False


def fleet_state(state: UnitState) -> FleetUnitState:
    stale = isinstance(state, UnitCopy) and state.stale
    return FleetUnitState(
        name=state.name,
        hash=state.hash,
        machineID=state.machine_id,
        systemdLoadState=state.load_state,
        systemdActiveState=state.active_state,
        systemdSubState=state.sub_state,
        stale=stale,
        ageSeconds=state.age_s if isinstance(state, UnitCopy) else 0.0,
    )


def page_token(request: web.Request) -> PageToken:
    try:
        return token_from_query(request.query.getall("nextPageToken", []))
    except PageTokenError as exc:
        raise ApiError(400, str(exc)) from None


def paged(request: web.Request, items: list[Any]) -> tuple[list[Any], str | None]:
    return page(items, page_token(request))


def parse_patch(raw: bytes, known: set[str]) -> dict[str, dict[str, str | None]]:
    """JSON-Patch on machine metadata -> {machine: {key: value or None to remove}}."""
    ops = decode_fleet(raw, list[PatchOp])
    out: dict[str, dict[str, str | None]] = {}
    for op in ops:
        if op.op not in ("add", "replace", "remove"):
            raise ApiError(400, f"invalid op {op.op!r}: must be add, replace or remove")
        match = _PATCH_PATH.fullmatch(op.path)
        if not match:
            raise ApiError(400, f"invalid path {op.path!r}: must be /<machineID>/metadata/<key>")
        machine_id, key = match.groups()
        if machine_id not in known:
            raise ApiError(400, f"machine {machine_id!r} does not exist")
        value: str | None = None
        if op.op != "remove":
            raw_value = op.value
            if isinstance(raw_value, dict):
                raw_value = raw_value.get("value")
            if not isinstance(raw_value, str):
                raise ApiError(400, f"{op.op} of {op.path!r} needs a string value")
            value = raw_value
        out.setdefault(machine_id, {})[key] = value
    return out


PAGE = ("nextPageToken",)


def routes(units: UnitService, machines: MachineService) -> Family:
    r = RouteTable(permission=perms.FLEET)

    @r.get(PREFIX + "/discovery", "fleet v1 discovery document", errors=(400,), any_method=True)
    async def discovery(request: web.Request) -> web.Response:
        if request.method != "GET":
            raise ApiError(400, "only HTTP GET supported against this resource")
        return json_response(fleet_v1_discovery())

    @r.get(PREFIX + "/machines", "List machines", response=MachinePage, errors=(400,), query=PAGE)
    async def list_machines(request: web.Request) -> web.Response:
        present = [
            fleet_machine(mach)
            for mach in machines.list_machines(tenant=tenant_of(request))
            if visible(mach)
        ]
        items, following = paged(request, present)
        return json_response(MachinePage(items, following))

    @r.patch(
        PREFIX + "/machines",
        "Patch machine metadata (JSON-Patch)",
        request=list[PatchOp],
        ok=204,
        errors=(400,),
    )
    async def patch_machines(request: web.Request) -> web.Response:
        known = {mach.id for mach in machines.list_machines(tenant=tenant_of(request))}
        machines.patch_metadata(parse_patch(await request.read(), known), tenant=tenant_of(request))
        return web.Response(status=204)

    @r.get(PREFIX + "/units", "List units", response=UnitPage, errors=(400,), query=PAGE)
    async def list_units(request: web.Request) -> web.Response:
        tenant = tenant_of(request)
        token = page_token(request)
        chunk, total = units.list_units_slice(*page_bounds(token), tenant=tenant)
        states = states_by_unit(units.states(tenant=tenant)) if chunk else {}
        items = [fleet_unit(u, states.get(u.name, [])) for u in chunk]
        return json_response(UnitPage(items, next_token(token, total)))

    @r.get(PREFIX + "/units/{name}", "Get a unit", response=FleetUnit, errors=(404,))
    async def get_unit(request: web.Request) -> web.Response:
        unit = units.get(request.match_info["name"], tenant=tenant_of(request))
        if unit is None:
            raise ApiError(404, "unit does not exist")
        return json_response(
            fleet_unit(unit, units.states(name=unit.name, tenant=tenant_of(request)))
        )

    @r.put(
        PREFIX + "/units/{name}",
        "Create, replace or change the state of a unit",
        request=UnitBody,
        ok=201,
        errors=(204, 400, 409, 415),
    )
    async def put_unit(request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            raise ApiError(415, "expected Content-Type application/json")
        item = request.match_info["name"]
        body = decode_fleet(await request.read(), UnitBody)
        name = body.name or item
        if name != item:
            raise ApiError(
                400, f"name in URL {item!r} differs from unit name in request body {name!r}"
            )
        try:
            validate_name(name)
        except UnitInvalid as exc:
            raise ApiError(400, str(exc)) from None
        if body.desiredState and body.desiredState not in DESIRED:
            raise ApiError(400, f"invalid desiredState {body.desiredState!r}")
        desired = body.desiredState or None
        tenant = tenant_of(request)
        action = await units.apply(
            name,
            body.options or [],
            desired,  # type: ignore[arg-type]
            tenant=tenant,
        )
        return web.Response(status=204 if action == "set_state" else 201)

    @r.delete(PREFIX + "/units/{name}", "Destroy a unit", ok=204, errors=(404,))
    async def delete_unit(request: web.Request) -> web.Response:
        if not await units.destroy(request.match_info["name"], tenant=tenant_of(request)):
            raise ApiError(404, "unit does not exist")
        return web.Response(status=204)

    @r.get(
        PREFIX + "/state",
        "List unit states",
        response=UnitStatePage,
        errors=(400,),
        query=(*PAGE, "machineID", "unitName"),
    )
    async def list_states(request: web.Request) -> web.Response:
        states = units.copies(
            machine_id=request.query.get("machineID") or None,
            name=request.query.get("unitName") or None,
            tenant=tenant_of(request),
        )
        known = units.unit_names(tenant=tenant_of(request))
        items = [fleet_state(s) for s in states if s.name in known]
        chunk, following = paged(request, items)
        return json_response(UnitStatePage(chunk, following))

    @r.get(PREFIX + "/state/{name}", "State of one unit", response=FleetUnitState, errors=(404,))
    async def get_state(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        unit = units.get(name, tenant=tenant_of(request))
        if unit is None:
            raise ApiError(404, "unit does not exist")
        states = [
            s
            for s in units.states(name=name, tenant=tenant_of(request))
            if s.machine_id in unit.machines
        ]
        # A known unit without a state yet answers with just its name: fleetctl start
        # polls this and a 404 would make it give up.
        return json_response(fleet_state(states[0]) if states else FleetUnitState(name=name))

    return Family(PREFIX, FLEET, r.routes)


def states_by_unit(states: list[UnitState]) -> dict[str, list[UnitState]]:
    out: dict[str, list[UnitState]] = {}
    for s in states:
        out.setdefault(s.name, []).append(s)
    return out
