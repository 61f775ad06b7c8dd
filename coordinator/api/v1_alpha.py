"""`/v1-alpha/`: the June 2014 fleet API draft (spec/fleet-v1-alpha-api.md), as documented.

The same units and machines as /fleet/v1, in the draft's shapes: file contents in
base64 with their SHA-1, the systemd states folded into the Unit entity, and
`targetMachine` for the placement.
"""

from __future__ import annotations

import base64

import msgspec
from aiohttp import web

from coordinator.api.discovery import fleet_v1_alpha_discovery
from coordinator.api.errors import ApiError, decode_fleet, json_response
from coordinator.api.fleet_v1 import (
    PAGE,
    FleetMachine,
    fleet_machine,
    paged,
    states_by_unit,
    visible,
)
from coordinator.api.routing import FLEET, Family, RouteTable, tenant_of
from coordinator.fleet.machines import MachineService
from coordinator.fleet.units import UnitService, current_state
from coordinator.models import Unit, UnitState
from coordinator.trust import permissions as perms
from proto.units import serialize

PREFIX = "/v1-alpha"


class AlphaUnit(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    fileContents: str
    fileHash: str
    desiredState: str = ""
    currentState: str = ""
    loadState: str = ""
    activeState: str = ""
    subState: str = ""
    targetMachine: str = ""


class AlphaUnitPage(msgspec.Struct, frozen=True, omit_defaults=True):
    units: list[AlphaUnit]
    nextPageToken: str | None = None


class AlphaMachinePage(msgspec.Struct, frozen=True, omit_defaults=True):
    machines: list[FleetMachine]
    nextPageToken: str | None = None


class DeletableUnit(msgspec.Struct, frozen=True):
    name: str


class DeletableUnits(msgspec.Struct, frozen=True):
    units: list[DeletableUnit]


def alpha_unit(unit: Unit, states: list[UnitState]) -> AlphaUnit:
    target = unit.machines[0] if len(unit.machines) == 1 else ""
    mine = next((s for s in states if s.machine_id == target), None)
    return AlphaUnit(
        name=unit.name,
        fileContents=base64.b64encode(serialize(unit.options).encode()).decode(),
        fileHash=unit.hash,
        desiredState=unit.desired_state,
        currentState=current_state(unit, states),
        loadState=mine.load_state if mine else "",
        activeState=mine.active_state if mine else "",
        subState=mine.sub_state if mine else "",
        targetMachine=target,
    )


def routes(units: UnitService, machines: MachineService) -> Family:
    r = RouteTable(permission=perms.FLEET)

    @r.get(PREFIX + "/discovery", "fleet v1-alpha discovery document")
    async def discovery(request: web.Request) -> web.Response:
        return json_response(fleet_v1_alpha_discovery())

    @r.get(
        PREFIX + "/units",
        "List units (draft shape)",
        response=AlphaUnitPage,
        errors=(400,),
        query=PAGE,
    )
    async def list_units(request: web.Request) -> web.Response:
        by_unit = states_by_unit(units.states(tenant=tenant_of(request)))
        items = [
            alpha_unit(u, by_unit.get(u.name, []))
            for u in units.list_units(tenant=tenant_of(request))
        ]
        chunk, next_token = paged(request, items)
        return json_response(AlphaUnitPage(chunk, next_token))

    @r.get(PREFIX + "/units/{name}", "Get a unit (draft shape)", response=AlphaUnit, errors=(404,))
    async def get_unit(request: web.Request) -> web.Response:
        unit = units.get(request.match_info["name"], tenant=tenant_of(request))
        if unit is None:
            raise ApiError(404, "unit does not exist")
        return json_response(
            alpha_unit(unit, units.states(name=unit.name, tenant=tenant_of(request)))
        )

    @r.delete(PREFIX + "/units", "Destroy units", request=DeletableUnits, ok=204, errors=(400,))
    async def destroy_units(request: web.Request) -> web.Response:
        body = decode_fleet(await request.read(), DeletableUnits)
        names = [u.name for u in body.units]
        missing = units.missing(names, tenant=tenant_of(request))
        if missing:
            raise ApiError(400, f"unit(s) do not exist: {', '.join(missing)}")
        for name in names:
            await units.destroy(name, tenant=tenant_of(request))
        return web.Response(status=204)

    @r.get(
        PREFIX + "/machines",
        "List machines (draft shape)",
        response=AlphaMachinePage,
        errors=(400,),
        query=PAGE,
    )
    async def list_machines(request: web.Request) -> web.Response:
        present = [
            fleet_machine(mach)
            for mach in machines.list_machines(tenant=tenant_of(request))
            if visible(mach)
        ]
        chunk, next_token = paged(request, present)
        return json_response(AlphaMachinePage(chunk, next_token))

    return Family(PREFIX, FLEET, r.routes)
