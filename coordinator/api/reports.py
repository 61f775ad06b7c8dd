"""`/moorage/v1/drift` and `/moorage/v1/stickers`: what machines report, for moorctl.

Both read what agents last reported (the coordinator never computes either);
``refresh=1`` asks the agents for a fresh drift check first.
"""

from __future__ import annotations

import asyncio

import msgspec
from aiohttp import web

from coordinator.api.errors import ApiError, json_response
from coordinator.hub import Hub
from coordinator.models import MachineDrift, MachineSticker
from coordinator.reports import ReportService, ReportUnavailable
from coordinator.store.ports import Store as DeployStore
from coordinator.store.ports import Store as Storage

PREFIX = "/moorage/v1"
REFRESH_TIMEOUT_S = 5.0


class DriftList(msgspec.Struct, frozen=True):
    """Each machine's last drift report (machines that never reported are left out);
    ``unreachable`` lists machines a refresh could not ask, with the reason."""

    machines: list[MachineDrift]
    unreachable: dict[str, str] = {}


class StickerList(msgspec.Struct, frozen=True):
    stickers: list[MachineSticker]


def routes(
    storage: Storage, deploystore: DeployStore, hub: Hub, reports: ReportService
) -> web.RouteTableDef:
    r = web.RouteTableDef()

    def machine_of(request: web.Request) -> str | None:
        machine_id = request.query.get("machine") or None
        if machine_id is not None and storage.get_machine(machine_id) is None:
            raise ApiError(404, f"machine {machine_id!r} does not exist")
        return machine_id

    @r.get(PREFIX + "/drift")
    async def drift(request: web.Request) -> web.Response:
        machine_id = machine_of(request)
        refresh = request.query.get("refresh", "") in ("1", "true")
        if not refresh:
            return json_response(DriftList(deploystore.drift(machine_id)))
        if machine_id is not None:
            try:
                fresh = await reports.refresh_drift(machine_id, REFRESH_TIMEOUT_S)
            except ReportUnavailable as exc:
                raise ApiError(504 if exc.reason == "timeout" else 503, exc.message) from None
            return json_response(DriftList([fresh]))
        machines = sorted(hub.sessions)
        answers = await asyncio.gather(
            *(reports.refresh_drift(mid, REFRESH_TIMEOUT_S) for mid in machines),
            return_exceptions=True,
        )
        fresh_by_id: dict[str, MachineDrift] = {}
        unreachable: dict[str, str] = {}
        for mid, answer in zip(machines, answers, strict=True):
            if isinstance(answer, MachineDrift):
                fresh_by_id[mid] = answer
            elif isinstance(answer, ReportUnavailable):
                unreachable[mid] = answer.message
            else:
                raise answer
        stored = {d.machine_id: d for d in deploystore.drift()}
        merged = stored | fresh_by_id
        return json_response(DriftList([merged[k] for k in sorted(merged)], unreachable))

    @r.get(PREFIX + "/stickers")
    async def stickers(request: web.Request) -> web.Response:
        return json_response(StickerList(deploystore.stickers(machine_of(request))))

    return r
