"""The machine's own load, reported to the coordinator for WebOps monitoring (#21):
CPU (from /proc/stat, between two reads), load averages, memory, the disk holding the
agent's state, uptime. Parsing is pure over the files' text; the loop reads and sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from proto import messages as m

log = logging.getLogger(__name__)

EVERY_S = 30.0
RETRY_S = 2.0
"""Until the first report went out (the link may not be up yet)."""

Send = Callable[[m.Message], Awaitable[bool]]
"""The link's send: False when not connected."""


def cpu_times(stat: str) -> tuple[int, int]:
    """(busy, total) jiffies from /proc/stat's first line. Pure."""
    for line in stat.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            total = sum(values[:8])
            return total - idle, total
    return 0, 0


def cpu_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    busy = after[0] - before[0]
    total = after[1] - before[1]
    if total <= 0 or busy < 0 or before == (0, 0):
        return 0.0
    return round(100.0 * busy / total, 1)


def memory(meminfo: str) -> tuple[int, int]:
    """(total, used) bytes: used is total less MemAvailable. Pure."""
    info: dict[str, int] = {}
    for line in meminfo.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            info[key] = int(parts[0]) * 1024
    total = info.get("MemTotal", 0)
    return total, max(0, total - info.get("MemAvailable", info.get("MemFree", 0)))


def loads(loadavg: str) -> tuple[float, float, float]:
    parts = loadavg.split()
    try:
        return float(parts[0]), float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        return 0.0, 0.0, 0.0


def uptime(text: str) -> float:
    try:
        return float(text.split()[0])
    except (IndexError, ValueError):
        return 0.0


def read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


def sample(before: tuple[int, int], disk_path: Path) -> tuple[m.MachineStats, tuple[int, int]]:
    """One report (blocking reads of /proc and statvfs: run it in a thread)."""
    now = cpu_times(read("/proc/stat"))
    total, used = memory(read("/proc/meminfo"))
    l1, l5, l15 = loads(read("/proc/loadavg"))
    disk_total = disk_used = 0
    with contextlib.suppress(OSError):
        st = os.statvfs(disk_path)
        disk_total = st.f_blocks * st.f_frsize
        disk_used = (st.f_blocks - st.f_bfree) * st.f_frsize
    stats = m.MachineStats(
        at=time.time(),
        cpu_percent=cpu_percent(before, now),
        load1=l1,
        load5=l5,
        load15=l15,
        memory_total=total,
        memory_used=used,
        disk_total=disk_total,
        disk_used=disk_used,
        uptime_s=uptime(read("/proc/uptime")),
        cpus=os.cpu_count() or 0,
    )
    return stats, now


async def loop(send: Send, disk_path: Path, every_s: float = EVERY_S) -> None:
    before = (0, 0)
    sent = False
    while True:
        stats, before = await asyncio.to_thread(sample, before, disk_path)
        with contextlib.suppress(ConnectionError, RuntimeError, OSError):
            sent = await send(stats) or sent
        await asyncio.sleep(every_s if sent else RETRY_S)
