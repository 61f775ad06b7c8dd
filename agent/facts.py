"""Host facts sent in Hello: what the coordinator schedules by and shows operators."""

from __future__ import annotations

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
