"""Host facts sent in Hello: what the coordinator schedules by and shows operators."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from proto.messages import Resources


def hostname() -> str:
    return socket.gethostname()


def primary_ip(hub_url: str) -> str:
    """The local address the kernel routes towards the coordinator (a UDP connect sends nothing)."""
    parts = urlsplit(hub_url)
    host = parts.hostname or "127.0.0.1"
    try:
        infos = socket.getaddrinfo(host, parts.port or 443, type=socket.SOCK_DGRAM)
    except OSError:
        return ""
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.connect(addr)
                return str(sock.getsockname()[0])
        except OSError:
            continue
    return ""


def resources(meminfo: str = "/proc/meminfo", *, memory_cap_mb: int = 0) -> Resources:
    """What this machine offers task runs (Hello and Facts): total RAM in MiB and 1000
    per CPU this process may use (0 when unknown). ``memory_cap_mb`` > 0 (the agent's
    ``task_memory_mb``) reports at most that much memory."""
    memory_mb = 0
    try:
        with open(meminfo, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory_mb = int(line.split()[1]) // 1024  # kB
                    break
    except (OSError, ValueError, IndexError):
        memory_mb = 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 0
    if memory_cap_mb > 0:
        memory_mb = min(memory_mb, memory_cap_mb) if memory_mb else memory_cap_mb
    return Resources(memory_mb=memory_mb, cpu_millis=cpus * 1000)
