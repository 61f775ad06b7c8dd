"""The agent's Prometheus metrics, served on a loopback port (`metrics_listen`).

A registry of its own (tests run several agents per host); a port already taken is
logged and skipped, never fatal: metrics must not stop an agent from running units.
Served by prometheus-client's own small threaded HTTP server rather than aiohttp's,
which the agent does not load at all (footprint: bench/README.md, figure 4).
"""

from __future__ import annotations

import asyncio
import logging
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

log = logging.getLogger(__name__)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.connected = Gauge("moorage_agent_connected", "1 while the link is up", registry=r)
        self.messages_in = Counter(
            "moorage_agent_messages_in", "Messages from the coordinator", ["type"], registry=r
        )
        self.messages_out = Counter(
            "moorage_agent_messages_out", "Messages to the coordinator", ["type"], registry=r
        )
        self.frame_errors = Counter(
            "moorage_agent_frame_errors", "Frames from the coordinator refused", registry=r
        )
        self.reconcile_seconds = Histogram(
            "moorage_agent_reconcile_seconds",
            "Duration of a reconcile pass",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 90),
            registry=r,
        )
        self.units = Gauge("moorage_agent_units", "Desired units on this machine", registry=r)
        self.reports = Counter("moorage_agent_state_reports", "StateReports sent", registry=r)

    async def serve(self, listen: str) -> MetricsServer | None:
        """Serve /metrics on HOST:PORT; None (and a warning) if it cannot bind."""
        if not listen:
            return None
        host, _, port = listen.rpartition(":")
        try:
            httpd, _ = start_http_server(
                int(port), addr=host.strip("[]") or "127.0.0.1", registry=self.registry
            )
        except (OSError, ValueError) as exc:
            log.warning("metrics not served on %s: %s", listen, exc)
            return None
        return MetricsServer(httpd)


class MetricsServer:
    """The running metrics server (a daemon thread); `cleanup` stops it."""

    def __init__(self, httpd: WSGIServer) -> None:
        self._httpd = httpd

    async def cleanup(self) -> None:
        await asyncio.to_thread(self._httpd.shutdown)
        self._httpd.server_close()
