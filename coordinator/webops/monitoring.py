"""WebOps monitoring (#21), from what agents report: each agent sends `MachineStats`
every half minute; the last one of each minute is kept per machine in the store (a
per-minute series, 2 days) and averaged into an hourly series (31 days) as it comes;
periods are answered by averaging one of them into buckets (1h in minutes ... 24h from
minutes, 7d and 30d from hours). Health is the latest report of each machine
of the tenant, with unit and deployment counts; errors are the WebOps log items of
level error (and warning, when asked)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Iterable, Iterator
from typing import Protocol

import msgspec

from coordinator.errors import Invalid, NotFound, Unavailable
from coordinator.fleet.units import UnitService
from coordinator.hub.sessions import Hub, Session
from coordinator.reports.logs import LogService
from coordinator.store.ports import MachineStore, MonitoringStore
from coordinator.webops import rules
from coordinator.webops.records import ErrorItem, Sample
from coordinator.webops.service import WebOpsService
from proto import messages as m

KEEP_MINUTES = 2 * 1440
KEEP_HOURS = 31 * 24
HOURLY_FROM_BUCKET_S = 3600
"""Periods whose buckets are at least an hour read the hourly series (`7d`, `30d`)."""
PERIODS: dict[str, tuple[int, int]] = {
    "1h": (3600, 60),
    "6h": (6 * 3600, 300),
    "24h": (86400, 900),
    "7d": (7 * 86400, 3600),
    "30d": (30 * 86400, 4 * 3600),
}
"""period -> (span, bucket) in seconds."""
ERROR_LEVELS = ("error", "warning")
"""What errors/ answers without a level (any log level may be asked for)."""
SYSTEM_UNITS: dict[str, str] = {
    "nginx": "nginx.service",
    "postgresql": "postgresql.service",
    "redis": "redis-server.service",
    "celery": "celery.service",
}
"""System log types -> the machine's systemd service whose journal they are (only
these: never a unit named by the caller)."""
MAX_SYSTEM_LINES = 5000


class Point(msgspec.Struct, frozen=True):
    machine: str
    timestamp: float
    """The bucket's start."""
    cpu_percent: float
    memory_percent: float
    disk_percent: float
    load1: float
    samples: int


class Store(MonitoringStore, MachineStore, Protocol):
    pass


# --- pure -----------------------------------------------------------------------------------


def percent(used: int, total: int) -> float:
    return round(100.0 * used / total, 1) if total > 0 else 0.0


def period_of(name: str) -> tuple[int, int]:
    if name not in PERIODS:
        raise Invalid(f"period must be one of {', '.join(PERIODS)}, got {name!r}")
    return PERIODS[name]


def downsample(samples: Iterable[Sample], bucket_s: int) -> list[Point]:
    """Averages per (machine, bucket), in the samples' order (machine, minute)."""
    out: list[Point] = []
    key: tuple[str, int] | None = None
    acc: list[Sample] = []

    def flush() -> None:
        if key is None or not acc:
            return
        n = len(acc)
        out.append(
            Point(
                machine=key[0],
                timestamp=float(key[1] * bucket_s),
                cpu_percent=round(sum(s.cpu_percent for s in acc) / n, 1),
                memory_percent=round(
                    sum(percent(s.memory_used, s.memory_total) for s in acc) / n, 1
                ),
                disk_percent=round(sum(percent(s.disk_used, s.disk_total) for s in acc) / n, 1),
                load1=round(sum(s.load1 for s in acc) / n, 2),
                samples=n,
            )
        )

    for s in samples:
        k = (s.machine_id, (s.minute * 60) // bucket_s)
        if k != key:
            flush()
            key, acc = k, []
        acc.append(s)
    flush()
    return out


# --- the service ----------------------------------------------------------------------------


class MonitoringService:
    def __init__(
        self,
        storage: Store,
        hub: Hub,
        units: UnitService,
        webops: WebOpsService,
        logs: LogService | None = None,
    ):
        self.logs = logs
        self.storage = storage
        self.hub = hub
        self.units = units
        self.webops = webops
        self.latest: dict[str, tuple[m.MachineStats, float]] = {}
        """machine -> (its last report, when it arrived)."""
        hub.handlers.append(self._on_message)

    async def _on_message(self, session: Session, message: m.Message) -> None:
        if not isinstance(message, m.MachineStats):
            return
        now = time.time()  # the coordinator's clock: agents' clocks may be off
        self.latest[session.machine_id] = (message, now)
        machine = self.storage.get_machine(session.machine_id)
        minute = int(now // 60)
        self.storage.sample_put(
            Sample(
                machine_id=session.machine_id,
                minute=minute,
                tenant=machine.tenant if machine is not None else "default",
                cpu_percent=max(0.0, min(100.0, message.cpu_percent)),
                load1=max(0.0, message.load1),
                memory_total=max(0, message.memory_total),
                memory_used=max(0, message.memory_used),
                disk_total=max(0, message.disk_total),
                disk_used=max(0, message.disk_used),
                uptime_s=max(0.0, message.uptime_s),
            ),
            minute - KEEP_MINUTES,
            minute - KEEP_HOURS * 60,
        )

    def health(self, tenant: str) -> dict[str, object]:
        machines = []
        online = self.hub.connected_ids()
        for mach in self.storage.list_machines(tenant=tenant):
            got = self.latest.get(mach.id)
            item: dict[str, object] = {
                "id": mach.id,
                "hostname": mach.hostname,
                "connected": mach.id in online,
                "reported_at": got[1] if got else None,
            }
            if got is not None:
                s = got[0]
                item.update(
                    {
                        "cpu_percent": s.cpu_percent,
                        "cpus": s.cpus,
                        "load": [s.load1, s.load5, s.load15],
                        "memory": {
                            "total": s.memory_total,
                            "used": s.memory_used,
                            "percent": percent(s.memory_used, s.memory_total),
                        },
                        "disk": {
                            "total": s.disk_total,
                            "used": s.disk_used,
                            "percent": percent(s.disk_used, s.disk_total),
                        },
                        "uptime_seconds": int(s.uptime_s),
                    }
                )
            machines.append(item)
        units = self.units.list_units(tenant=tenant)
        counts = self.webops.counts(tenant)
        return {
            "machines": machines,
            "services": {"total": len(units)},
            "deployments": {"total": sum(counts.values()), **counts},
            "timestamp": time.time(),
        }

    def metrics(self, tenant: str, period: str, machine: str = "") -> list[Point]:
        span, bucket = period_of(period)
        points = downsample(self._samples(tenant, span, bucket), bucket)
        return [p for p in points if not machine or p.machine == machine]

    def export_pages(self, tenant: str, period: str, page: int = 500) -> Iterator[list[Point]]:
        """The period's points, a page of samples at a time (a bucket may be split at a
        page's edge: it then shows as two points with their own sample counts)."""
        span, bucket = period_of(period)
        since = int((time.time() - span) // 60)
        after: tuple[str, int] = ("", -1)
        hourly = bucket >= HOURLY_FROM_BUCKET_S
        while True:
            got = self.storage.samples(tenant, since, after, page, hourly=hourly)
            if not got:
                return
            yield downsample(got, bucket)
            after = (got[-1].machine_id, got[-1].minute)

    def _samples(self, tenant: str, span: int, bucket: int) -> list[Sample]:
        since = int((time.time() - span) // 60)
        hourly = bucket >= HOURLY_FROM_BUCKET_S
        return self.storage.samples(tenant, since, hourly=hourly)

    def errors(
        self,
        tenant: str,
        *,
        level: str = "",
        since: float = 0.0,
        until: float = 0.0,
        search: str = "",
        offset: int = 0,
        limit: int = 20,
    ) -> tuple[list[ErrorItem], int]:
        if level and level not in rules.LEVELS:
            raise Invalid(f"level must be one of {', '.join(rules.LEVELS)}, got {level!r}")
        levels = (level,) if level else ERROR_LEVELS
        return self.storage.webops_errors(
            tenant,
            levels=levels,
            since=since,
            until=until,
            search=search[:200],
            offset=offset,
            limit=limit,
        )

    async def system_log(
        self, tenant: str, kind: str, *, machine: str = "", lines: int = 50
    ) -> tuple[str, list[m.LogLine]]:
        """(the machine, the last `lines` of its `kind` service's journal)."""
        machine = self._system_machine(tenant, kind, machine, lines)
        out: list[m.LogLine] = []
        async for batch in self._system_stream(machine, kind, lines, follow=False):
            out.extend(batch)
        return machine, out[-lines:]

    def system_follow(
        self, tenant: str, kind: str, *, machine: str = "", lines: int = 50
    ) -> tuple[str, AsyncGenerator[list[m.LogLine], None]]:
        """(the machine, its `kind` service's journal: the last `lines`, then new lines
        as they come, until the caller closes it). Bad arguments raise now."""
        machine = self._system_machine(tenant, kind, machine, lines)
        return machine, self._system_stream(machine, kind, lines, follow=True)

    async def _system_stream(
        self, machine: str, kind: str, lines: int, *, follow: bool
    ) -> AsyncGenerator[list[m.LogLine], None]:
        if self.logs is None:
            raise Unavailable("system logs are not available")
        stream = self.logs.stream(machine, SYSTEM_UNITS[kind], lines=lines, follow=follow)
        async with contextlib.aclosing(stream) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                if chunk.error:
                    raise Unavailable(f"machine {machine}: {chunk.error}")
                yield list(chunk.lines)

    def _system_machine(self, tenant: str, kind: str, machine: str, lines: int) -> str:
        if kind not in SYSTEM_UNITS:
            raise Invalid(f"type must be one of {', '.join(SYSTEM_UNITS)}, got {kind!r}")
        if not 1 <= lines <= MAX_SYSTEM_LINES:
            raise Invalid(f"lines must be between 1 and {MAX_SYSTEM_LINES}")
        mine = [x.id for x in self.storage.list_machines(tenant=tenant)]
        if machine:
            if machine not in mine:
                raise NotFound(f"machine {machine!r} does not exist")
        else:
            online = self.hub.connected_ids()
            connected = [x for x in mine if x in online]
            if len(connected) != 1:
                raise Invalid(
                    f"machine is required (the tenant has {len(connected)} connected machines)"
                )
            machine = connected[0]
        return machine
