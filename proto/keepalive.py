"""TCP keepalive for the agent link, on both ends: a silently dropped link is noticed
by the kernels in about `DEAD_AFTER_S`, without one more message on 10,000 sessions.

Heartbeats stay slow (they cost the hub a message each); keepalive probes are sent by
the kernel only on an idle connection and answered by the peer's kernel.
TCP_USER_TIMEOUT covers the case keepalive does not: data sent but never acked.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

KEEPIDLE_S = 5
KEEPINTVL_S = 2
KEEPCNT = 3
DEAD_AFTER_S = KEEPIDLE_S + KEEPINTVL_S * KEEPCNT
"""Silence after which the kernel ends the connection (11 s)."""


def enable_keepalive(sock: Any) -> bool:
    """Set keepalive on a connected TCP socket (or asyncio's TransportSocket); False
    where the platform lacks the options (the heartbeat still catches a dead link)."""
    if sock is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPIDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPINTVL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPCNT)
        with contextlib.suppress(AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, DEAD_AFTER_S * 1000)
    except (OSError, AttributeError):
        return False
    return True
