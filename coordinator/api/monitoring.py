"""`/api/v1/monitoring`: WebOps monitoring (#21), a thin adapter over
`MonitoringService`, in the envelope; every route needs `monitoring`."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import math
from typing import Any

import msgspec
from aiohttp import web

from coordinator.api.errors import ApiError
from coordinator.api.identity import Envelope, Pagination, ok, page_args
from coordinator.api.routing import ENVELOPE, Family, RouteTable, tenant_of
from coordinator.api.webops import FOLLOW_MAX_S, since_arg
from coordinator.errors import Unavailable
from coordinator.timefmt import iso
from coordinator.trust import permissions as perms
from coordinator.webops import export
from coordinator.webops.monitoring import PERIODS, MonitoringService, Point

V1 = "/api/v1/monitoring"
LOGS = "/api/v1/logs"
COLUMNS = (
    "machine",
    "timestamp",
    "cpu_percent",
    "memory_percent",
    "disk_percent",
    "load1",
    "samples",
)


def point_out(p: Point) -> dict[str, Any]:
    data = msgspec.to_builtins(p)
    data["timestamp"] = iso(p.timestamp)
    return dict(data)


def csv_points(points: list[Point]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    for p in points:
        row = point_out(p)
        writer.writerow([export.csv_cell(row[c]) for c in COLUMNS])
    return out.getvalue().encode()


def routes(service: MonitoringService) -> list[Family]:
    r = RouteTable(permission=perms.MONITORING)
    logs = RouteTable(permission=perms.MONITORING)

    def period(request: web.Request) -> str:
        value = request.query.get("period", "1h")
        if value not in PERIODS:
            raise ApiError(400, f"period must be one of {', '.join(PERIODS)}, got {value!r}")
        return value

    @r.get(
        V1 + "/health/",
        "Machines' CPU, memory, disk, load and uptime as their agents last reported,"
        " with service and deployment counts",
        response=Envelope,
    )
    async def health(request: web.Request) -> web.Response:
        data = service.health(tenant_of(request))
        for mach in data["machines"]:  # type: ignore[attr-defined]
            mach["reported_at"] = iso(mach["reported_at"] or 0.0)
        data["timestamp"] = iso(float(data["timestamp"]))  # type: ignore[arg-type]
        return ok(data)

    @r.get(
        V1 + "/metrics/",
        "Machines' load over a period (1h, 6h, 24h, 7d, 30d), averaged into buckets",
        response=Envelope,
        errors=(400,),
        query=("period", "machine"),
    )
    async def metrics(request: web.Request) -> web.Response:
        p = period(request)
        points = service.metrics(tenant_of(request), p, request.query.get("machine", ""))
        _, bucket = PERIODS[p]
        return ok(
            {
                "period": p,
                "bucket_seconds": bucket,
                "points": [point_out(x) for x in points],
            }
        )

    @r.get(
        V1 + "/errors/",
        "WebOps error (and warning) log items, newest first",
        response=Envelope,
        errors=(400,),
        query=("level", "since", "until", "search", "page", "per_page"),
    )
    async def errors(request: web.Request) -> web.Response:
        page, per_page = page_args(request)
        until_raw = request.query.get("until", "")
        try:
            until = float(until_raw) if until_raw else 0.0
        except ValueError:
            raise ApiError(
                400, f"until must be seconds since the epoch, got {until_raw!r}"
            ) from None
        items, total = service.errors(
            tenant_of(request),
            level=request.query.get("level", ""),
            since=since_arg(request),
            until=until,
            search=request.query.get("search", ""),
            offset=(page - 1) * per_page,
            limit=per_page,
        )
        pag = Pagination(page, per_page, total, max(1, math.ceil(total / per_page)))
        data = [
            {
                "id": i.id,
                "deployment": i.deployment,
                "level": i.level,
                "message": i.message,
                "created_at": iso(i.created_at),
            }
            for i in items
        ]
        return ok(data, pagination=pag)

    @r.get(
        V1 + "/export/",
        "Machines' load over a period as JSON or CSV, streamed",
        errors=(400,),
        query=("period", "format"),
    )
    async def export_(request: web.Request) -> web.StreamResponse:
        p = period(request)
        fmt = request.query.get("format", "json")
        if fmt not in export.FORMATS:
            raise ApiError(400, f"format must be one of {', '.join(export.FORMATS)}, got {fmt!r}")
        kind = "text/csv; charset=utf-8" if fmt == "csv" else "application/json"
        resp = web.StreamResponse(
            headers={
                "Content-Type": kind,
                "Content-Disposition": f'attachment; filename="metrics-{p}.{fmt}"',
            }
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(export.csv_lines([list(COLUMNS)]) if fmt == "csv" else b"[")
        first = True
        for points in service.export_pages(tenant_of(request), p):
            if fmt == "csv":
                await resp.write(csv_points(points))
            elif points:
                body = b",".join(msgspec.json.encode(point_out(x)) for x in points)
                await resp.write((b"" if first else b",") + body)
                first = False
        if fmt == "json":
            await resp.write(b"]")
        await resp.write_eof()
        return resp

    @logs.get(
        LOGS + "/system/",
        "The last lines of a machine's system service journal (type: nginx, postgresql,"
        " redis, celery)",
        response=Envelope,
        errors=(400, 404, 503),
        query=("type", "machine", "lines", "follow"),
    )
    async def system(request: web.Request) -> web.StreamResponse:
        raw = request.query.get("lines", "50")
        if not raw.isdigit():
            raise ApiError(400, f"lines must be an integer, got {raw!r}")
        follow = request.query.get("follow", "false")
        if follow not in ("1", "true", "0", "false", ""):
            raise ApiError(400, f"follow must be true or false, got {follow!r}")
        if follow in ("1", "true"):
            return await system_follow(request, int(raw[:6]))
        machine, lines = await service.system_log(
            tenant_of(request),
            request.query.get("type", "nginx"),
            machine=request.query.get("machine", ""),
            lines=int(raw[:6]),
        )
        data = {
            "machine": machine,
            "type": request.query.get("type", "nginx"),
            "logs": [{"timestamp": iso(x.timestamp), "message": x.message} for x in lines],
            "total_lines": len(lines),
        }
        return ok(data)

    async def system_follow(request: web.Request, count: int) -> web.StreamResponse:
        """NDJSON lines `{timestamp, message}`: the last `lines`, then each new one, until
        the client goes away or FOLLOW_MAX_S (as a deployment's log follow)."""
        _, batches = service.system_follow(
            tenant_of(request),
            request.query.get("type", "nginx"),
            machine=request.query.get("machine", ""),
            lines=count,
        )
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        prepared = False
        try:
            async with asyncio.timeout(FOLLOW_MAX_S), contextlib.aclosing(batches):
                async for batch in batches:
                    if not prepared:
                        await resp.prepare(request)
                        prepared = True
                    for line in batch:
                        item = {"timestamp": iso(line.timestamp), "message": line.message}
                        await resp.write(msgspec.json.encode(item) + b"\n")
        except TimeoutError:
            pass
        except Unavailable as exc:
            if not prepared:
                raise
            await resp.write(msgspec.json.encode({"error": str(exc)}) + b"\n")
        except ConnectionResetError:
            return resp  # the client went away
        if not prepared:
            await resp.prepare(request)
        await resp.write_eof()
        return resp

    return [Family(V1, ENVELOPE, r.routes), Family(LOGS, ENVELOPE, logs.routes)]
