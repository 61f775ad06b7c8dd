"""`GET /moorage/v1/audit`: the audit log, newest first, filtered and paged by cursor
(admin only)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from coordinator.api.errors import ApiError, json_response
from coordinator.api.routing import FLEET, Family, RouteTable
from coordinator.audit import MAX_PAGE, AuditLog
from coordinator.models import AuditEntry, AuditQuery

PATH = "/moorage/v1/audit"
FILTERS = (
    "principal",
    "tenant",
    "kind",
    "method",
    "path",
    "route",
    "status",
    "event",
    "since",
    "until",
    "limit",
    "cursor",
)


class AuditPage(msgspec.Struct, frozen=True):
    entries: list[AuditEntry]
    next_cursor: str | None
    """Pass as `cursor` for the next (older) page; null on the last."""


def query_of(params: dict[str, str]) -> AuditQuery:
    """The query from the URL's parameters; ApiError 400 naming a bad one. Pure."""
    unknown = sorted(set(params) - set(FILTERS))
    if unknown:
        raise ApiError(400, f"unknown query parameter(s): {', '.join(unknown)}")

    def number(name: str, kind: type[int] | type[float]) -> int | float:
        raw = params.get(name, "")
        if not raw:
            return kind(0)
        try:
            value = kind(raw)
        except ValueError:
            raise ApiError(400, f"{name} must be a number, got {raw[:40]!r}") from None
        if value < 0 or value != value:
            raise ApiError(400, f"{name} must not be negative")
        return value

    # Capped, not refused (as the other lists page): at most MAX_PAGE a page.
    limit = min(MAX_PAGE, int(number("limit", int))) if params.get("limit") else 100
    return AuditQuery(
        principal=params.get("principal", ""),
        tenant=params.get("tenant", ""),
        kind=params.get("kind", ""),
        method=params.get("method", ""),
        path_prefix=params.get("path", ""),
        route=params.get("route", ""),
        status=int(number("status", int)),
        event=params.get("event", ""),
        since=float(number("since", float)),
        until=float(number("until", float)),
        before=int(number("cursor", int)),
        limit=limit,
    )


def routes(audit: AuditLog) -> Family:
    r = RouteTable()

    @r.get(
        PATH,
        "The audit log: every write request and domain event, newest first. Filters:"
        " principal (name or kind:name), tenant, kind (request|event), method, path"
        " (prefix), route (template), status, event (kind or prefix ending in '.'),"
        " since/until (epoch seconds), limit (at most 1000 a page), cursor (next_cursor of a"
        " page)",
        response=AuditPage,
        errors=(400,),
        query=FILTERS,
        permission="admin",
    )
    async def list_audit(request: web.Request) -> web.Response:
        params: dict[str, str] = {}
        for key, value in request.query.items():
            if key in params:
                raise ApiError(400, f"{key} given more than once")
            params[key] = value
        entries, cursor = await audit.query(query_of(params))
        return json_response(AuditPage(entries, None if cursor is None else str(cursor)))

    return Family("/moorage/v1/audit", FLEET, r.routes)
