"""`/fleet/v1/`: what `fleetctl` v1.0.0 speaks (see spec/fleet-v1-notes.md)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from coordinator.api.errors import ApiError, json_response
from coordinator.api.paging import PageTokenError, page, token_from_query
from coordinator.models import Machine
from coordinator.storage import Storage

PREFIX = "/fleet/v1"


class FleetMachine(msgspec.Struct, frozen=True):
    id: str
    primaryIP: str
    metadata: dict[str, str]


class MachinePage(msgspec.Struct, frozen=True, omit_defaults=True):
    machines: list[FleetMachine]
    nextPageToken: str | None = None


def fleet_machine(machine: Machine) -> FleetMachine:
    return FleetMachine(machine.id, machine.primary_ip, dict(machine.metadata))


def visible(machine: Machine) -> bool:
    """fleet lists machines that are present; a lost machine has left the cluster."""
    return not machine.revoked and machine.state != "lost"


def paged(request: web.Request, items: list[FleetMachine]) -> tuple[list[FleetMachine], str | None]:
    try:
        token = token_from_query(request.query.getall("nextPageToken", []))
    except PageTokenError as exc:
        raise ApiError(400, str(exc)) from None
    return page(items, token)


def routes(storage: Storage) -> web.RouteTableDef:
    r = web.RouteTableDef()

    @r.get(PREFIX + "/machines")
    async def list_machines(request: web.Request) -> web.Response:
        machines = [fleet_machine(mach) for mach in storage.list_machines() if visible(mach)]
        items, next_token = paged(request, machines)
        return json_response(MachinePage(items, next_token))

    return r
