"""`/moorage/v1/drift` and `/moorage/v1/stickers`: what machines report, for moorctl.

Both read what agents last reported (the coordinator never computes either);
``refresh=1`` asks the agents for a fresh drift check first.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from coordinator.api.errors import json_response
from coordinator.api.routing import FLEET, Family, RouteTable, tenant_of
from coordinator.models import MachineDrift, MachineSticker
from coordinator.reports.service import ReportService
from coordinator.trust import permissions as perms

PREFIX = "/moorage/v1"
REFRESH_TIMEOUT_S = 5.0


class DriftList(msgspec.Struct, frozen=True):
    """Each machine's last drift report (machines that never reported are left out);
    ``unreachable`` lists machines a refresh could not ask, with the reason."""

    machines: list[MachineDrift]
    unreachable: dict[str, str] = {}


class StickerList(msgspec.Struct, frozen=True):
    stickers: list[MachineSticker]


def routes(reports: ReportService) -> Family:
    r = RouteTable(permission=perms.MONITORING)

    @r.get(
        PREFIX + "/drift",
        "Each machine's last drift report; refresh=1 asks the agents first",
        response=DriftList,
        errors=(404, 503, 504),
        query=("machine", "refresh"),
    )
    async def drift(request: web.Request) -> web.Response:
        machine_id = request.query.get("machine") or None
        refresh = request.query.get("refresh", "") in ("1", "true")
        if not refresh:
            return json_response(DriftList(reports.drift(machine_id, tenant=tenant_of(request))))
        if machine_id is not None:
            reports.check_machine(machine_id, tenant=tenant_of(request))
            return json_response(
                DriftList([await reports.refresh_drift(machine_id, REFRESH_TIMEOUT_S)])
            )
        merged, unreachable = await reports.refresh_all_drift(
            REFRESH_TIMEOUT_S, tenant=tenant_of(request)
        )
        return json_response(DriftList(merged, unreachable))

    @r.get(
        PREFIX + "/stickers",
        "Version stickers as the machines report them",
        response=StickerList,
        errors=(404,),
        query=("machine",),
    )
    async def stickers(request: web.Request) -> web.Response:
        return json_response(
            StickerList(
                reports.stickers(request.query.get("machine") or None, tenant=tenant_of(request))
            )
        )

    return Family(PREFIX, FLEET, r.routes)
