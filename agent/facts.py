"""Host facts sent in Hello: what the coordinator schedules by and shows operators."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit


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


def capabilities(bus_address: str | None, docker_host: str | None) -> list[str]:
    """Cheap presence checks; the backends refine them once they connect."""
    caps: list[str] = []
    if bus_address and _unix_socket_exists(bus_address):
        caps.append("systemd")
    if docker_host is not None and _unix_socket_exists(docker_host):
        caps.append("docker")
    return caps


def _unix_socket_exists(address: str) -> bool:
    for prefix in ("unix:path=", "unix://"):
        if address.startswith(prefix):
            path = address[len(prefix) :].split(",")[0].split(";")[0]
            return os.path.exists(path)
    return False
